"""The registry-route Detectron2 build: the sdist's setup.py edits are applied and checked."""
import importlib.util
import os

import pytest

from conftest import REPO

_spec = importlib.util.spec_from_file_location(
    "build_detectron2_wheel", os.path.join(REPO, "tools", "build_detectron2_wheel.py"))
bdw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bdw)

SETUP_EXCERPT = '''
    install_requires=[
        "omegaconf>=2.1",
        "black==21.4b2",
    ],
    package_data={"detectron2.model_zoo": get_model_zoo_configs()},
    ext_modules=get_extensions(),
'''


def test_patch_applies_the_three_edits():
    out = bdw.patch_setup_py(SETUP_EXCERPT)
    assert "ext_modules=[]," in out and "get_extensions()" not in out
    assert '"configs/**/*.yaml"' in out and "black" not in out


def test_patch_fails_loudly_on_unexpected_sdist():
    with pytest.raises(RuntimeError, match="expected exactly one occurrence"):
        bdw.patch_setup_py(SETUP_EXCERPT.replace("ext_modules=get_extensions(),", ""))


def test_installed_detectron2_has_model_zoo_configs():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    assert os.path.isfile(path)
