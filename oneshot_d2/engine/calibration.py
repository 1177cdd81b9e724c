"""Temperature calibration of a trained slice classifier on a validation split
(:mod:`oneshot_d2.evaluation.calibration`), as a training hook (``TEST.CLASSIFICATION.
CALIBRATION_DATASET``: fitted after the last iteration, before the final checkpoint and the
final evaluation, so ``model_final.pth`` carries it) and as a function for ``tools/calibrate.py``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Dict, Tuple

import numpy as np
import torch
from detectron2.data import build_detection_test_loader
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.mapper import CTDatasetMapper
from ..evaluation._gather import gather_on_main
from ..evaluation.calibration import calibration_summary, fit_temperature
from ..modeling.meta_arch import image_cls_only
from ..modeling.meta_arch.ct_rcnn import TEMPERATURE_BUFFER
from ..utils.file_io import atomic_write_bytes
from .utils import unwrap_model

__all__ = ["collect_log_probs", "calibrate_model", "TemperatureCalibrationHook",
           "CALIBRATION_FILE"]

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"


@torch.no_grad()
def collect_log_probs(cfg, model: torch.nn.Module, dataset_name: str,
                      distributed: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Uncalibrated (T = 1) log-probabilities and labels of a classification dataset, with the
    evaluation's loader and preprocessing; gathered on the main process (``None`` elsewhere when
    ``distributed``). The model's temperature is restored afterwards."""
    inner = unwrap_model(model)
    temperature = getattr(inner, TEMPERATURE_BUFFER)
    saved, was_training = temperature.clone(), inner.training
    loader = build_detection_test_loader(
        cfg, dataset_name, mapper=CTDatasetMapper(cfg, False, (dataset_name,)))
    rows = []
    cls_only = image_cls_only(inner) if hasattr(inner, "inference_outputs") \
        else contextlib.nullcontext()
    try:
        temperature.fill_(1.0)
        inner.eval()
        with cls_only:
            for batch in loader:
                for x, out in zip(batch, inner(batch)):
                    probs = out["image_cls"].float().clamp_min(1e-12).cpu()
                    rows.append((torch.log(probs).numpy(), int(x["image_label"])))
    finally:
        temperature.copy_(saved)
        inner.train(was_training)
    rows = gather_on_main(rows, distributed)
    if rows is None:
        return None, None
    return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=np.int64)


def calibrate_model(cfg, model: torch.nn.Module, dataset_name: str,
                    distributed: bool = True) -> Dict[str, float]:
    """Fit the temperature on ``dataset_name`` and set it in ``model`` (every process gets the
    main process's value). Returns :func:`calibration_summary` (NLL, ECE, Brier before and
    after; ``{}`` on other processes)."""
    log_probs, labels = collect_log_probs(cfg, model, dataset_name, distributed)
    summary: Dict[str, float] = {}
    temperature = 1.0
    if log_probs is not None:
        temperature = fit_temperature(log_probs, labels)
        summary = {"dataset": dataset_name, **calibration_summary(log_probs, labels,
                                                                   temperature)}
    if distributed and comm.get_world_size() > 1:
        temperature = comm.all_gather(temperature)[0]
    getattr(unwrap_model(model), TEMPERATURE_BUFFER).fill_(temperature)
    if summary:
        logger.info("Temperature scaling on %s (%d images): T = %.3f; NLL %.4f -> %.4f, ECE "
                    "%.2f -> %.2f %%, Brier %.4f -> %.4f", dataset_name, summary["num_images"],
                    temperature, summary["nll_before"], summary["nll_after"],
                    summary["ece_before"], summary["ece_after"], summary["brier_before"],
                    summary["brier_after"])
    return summary


class TemperatureCalibrationHook(HookBase):
    """After the last iteration (after precise BN, before the final checkpoint and evaluation),
    fit the model's temperature on ``dataset_name`` and write ``<output_dir>/calibration.json``.
    """

    def __init__(self, cfg, dataset_name: str, output_dir: str):
        self.cfg = cfg
        self.dataset_name = dataset_name
        self.output_dir = output_dir

    def after_step(self):
        if self.trainer.iter + 1 < self.trainer.max_iter:
            return
        summary = calibrate_model(self.cfg, self.trainer.model, self.dataset_name)
        if summary and comm.is_main_process():
            atomic_write_bytes(os.path.join(self.output_dir, CALIBRATION_FILE),
                               json.dumps(summary, indent=2).encode())
