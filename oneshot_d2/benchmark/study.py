"""The ``study`` task: a phantom patient volume written as NIfTI, through ``tools/predict.py``'s
pipeline end to end (read, window, model in batches, lung mask, report and study folder; no
overlays), with a given model (default: the ``make demo`` model if trained, else random
weights) at its training resolution and at other input sizes: seconds per stage."""
from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Dict, List, Sequence

import numpy as np
import torch
from tabulate import tabulate

from oneshot_d2.config import load_config
from oneshot_d2.data.phantom import COVID
from oneshot_d2.data.phantom_study import render_phantom_study, write_nifti_volume
from oneshot_d2.export import FILE_NAMES, FORMATS
from oneshot_d2.inference import (
    OneShotPredictor,
    find_studies,
    predict_study,
    study_report,
    write_study,
)
from oneshot_d2.inference.exported_predictor import BACKEND_FORMATS, ExportedPredictor
from oneshot_d2.inference.exporting import export_files

__all__ = ["DEMO_CONFIG", "DEMO_WEIGHTS", "LEVERS", "default_weights", "bench_study",
           "print_study_table"]

logger = logging.getLogger("benchmark")

DEMO_CONFIG = "configs/quick_schedules/oneshot_affinity_R_18_FPN_phantom_quick.yaml"
DEMO_WEIGHTS = "output/oneshot_affinity_R_18_FPN_phantom_quick/model_final.pth"


def default_weights(repo: str) -> str:
    """:data:`DEMO_WEIGHTS` in ``repo`` when ``make demo`` has trained it, else "" (random
    weights)."""
    path = os.path.join(repo, DEMO_WEIGHTS)
    return path if os.path.isfile(path) else ""


# The levers of the study benchmark: (row label, predict backend, config options).
LEVERS = {
    "nchw": ("torch, NCHW (the model path before channels-last: the baseline)", "torch",
             ["PREDICT.CHANNELS_LAST", "False"]),
    "torch": ("torch, channels-last (the default)", "torch", []),
    "torchscript": ("TorchScript (exported)", "torchscript", []),
    "onnxruntime": ("ONNX Runtime (exported)", "onnxruntime", []),
}


def _predictor(cfg, backend: str, batch: int, weights: str, exported: Dict[str, str]):
    if backend == "torch":
        return OneShotPredictor(cfg, batch_size=batch, allow_random_weights=not weights)
    return ExportedPredictor(cfg, exported[backend], backend, batch_size=batch)


def bench_study(repo: str, config: str, weights: str, slices: int, size: int,
                input_sizes: Sequence[int], batch: int, device: str,
                levers: Sequence[str] = tuple(LEVERS)) -> List[list]:
    """Rows of the study benchmark: seconds per stage of one predict run of a ``slices`` x
    ``size`` px phantom study, for each of ``levers`` (:data:`LEVERS`) at the config's input
    size, then with the default predictor at each other of ``input_sizes`` (0: the config's).
    ``config`` is relative to ``repo``; ``weights`` "" runs random weights. Each row's
    ``vs first`` is the first row's seconds over its own; ``burden`` the lesion volume."""
    t = time.perf_counter()
    study = render_phantom_study(COVID, num_slices=slices, size=size, seed=0,
                                 slice_spacing_mm=1.25)
    logger.info("rendered a %d-slice %d px phantom study in %.0f s", slices, size,
                time.perf_counter() - t)
    runs = [(lever, 0) for lever in levers] + [("torch", s) for s in input_sizes if s]
    rows: List[list] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "study.nii.gz")
        write_nifti_volume(path, study.hu, study.spacing)
        exported: Dict[str, str] = {}
        for lever, input_size in runs:
            label, backend, lever_opts = LEVERS[lever]
            opts = ["MODEL.DEVICE", device, "MODEL.WEIGHTS", weights, *lever_opts]
            if input_size:
                opts += ["INPUT.MIN_SIZE_TEST", str(input_size),
                         "INPUT.MAX_SIZE_TEST", str(input_size)]
            cfg = load_config(os.path.join(repo, config), opts)
            if backend != "torch" and not exported:
                t = time.perf_counter()
                source = OneShotPredictor(cfg, batch_size=1, allow_random_weights=not weights)
                export_files(source, FORMATS, os.path.join(tmp, "exported"))
                exported = {b: os.path.join(tmp, "exported", FILE_NAMES[f])
                            for b, f in BACKEND_FORMATS.items()}
                logger.info("exported (both formats, checked) in %.0f s",
                            time.perf_counter() - t)
            predictor = _predictor(cfg, backend, batch, weights, exported)
            predictor(np.zeros((2, size, size), np.uint8))  # warm-up
            out = os.path.join(tmp, f"out_{len(rows)}")
            t0 = time.perf_counter()
            refs, errors = find_studies([path])
            loaded = refs[0].load()
            t1 = time.perf_counter()
            pred = predict_study(predictor, loaded)
            t2 = time.perf_counter()
            report = study_report(pred, predictor, config)
            write_study(out, pred, report, cfg.dump(), predictor.image_classes,
                        predictor.lesion_classes)
            t3 = time.perf_counter()
            total = t3 - t0
            stages = (f"read {t1 - t0:.1f} s, window {pred.seconds['window']:.1f} s, model "
                      f"{pred.seconds['model']:.1f} s, lung mask {pred.seconds['lung_mask']:.1f}"
                      f" s, report + write {t3 - t2:.1f} s")
            burden = report["burden"]["ml"]["total"] if report.get("burden") and \
                report["burden"].get("ml") else None
            rows.append([label, f"{slices} x {size}px -> {cfg.INPUT.MIN_SIZE_TEST}px", batch,
                         "trained" if weights else "random", round(total, 1),
                         round(slices / total, 2),
                         round(rows[0][4] / total, 2) if rows else 1.0, stages,
                         report["patient"]["class"] if report["patient"] else "",
                         None if burden is None else round(burden, 2)])
    return rows


def print_study_table(repo: str, config: str, weights: str, slices: int, size: int,
                      input_sizes: Sequence[int], batch: int, device: str,
                      device_name: str, levers: Sequence[str] = tuple(LEVERS)) -> None:
    """Run :func:`bench_study` and print its table."""
    rows = bench_study(repo, config, weights, slices, size, input_sizes, batch, device, levers)
    print(f"\nStudy through tools/predict.py's pipeline (NIfTI in, no overlays), "
          f"{os.path.basename(config)}, {device_name}, torch {torch.__version__}\n")
    print(tabulate(rows, headers=["predictor", "study -> model input", "batch", "weights",
                                  "seconds", "slices/s", "vs first", "where the time goes",
                                  "patient result", "lesions mL"], tablefmt="pipe"))
