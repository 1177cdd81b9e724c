"""Export a predictor's model (TorchScript, ONNX) and check each file against PyTorch:
``tools/export_model.py`` and the study benchmark's exported backends."""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode

from ..data.phantom import COVID
from ..data.phantom_study import render_phantom_study
from ..data.transforms import lung_window
from ..errors import OneShotError, UsageError
from ..export import (
    FILE_NAMES,
    FlatInferenceModel,
    export_description,
    export_onnx,
    export_torchscript,
    load_exported,
    output_differences,
    outside_tolerance,
)
from ..utils.file_io import atomic_write_json, atomic_write_text, make_folder
from ..utils.temp_names import sibling_name
from .predictor import OneShotPredictor

__all__ = ["ExportMismatch", "sample_slices", "export_files"]

logger = logging.getLogger(__name__)


class ExportMismatch(OneShotError):
    """An exported file's outputs differ from PyTorch's beyond the tolerances."""


def sample_slices(cfg: CfgNode, size: int = 512) -> List[np.ndarray]:
    """Two uint8 phantom slices in the model's window: ``size`` x ``size`` and a
    ``size`` x 0.8 ``size`` crop of it (another model input size)."""
    study = render_phantom_study(COVID, num_slices=1, size=size, seed=0)
    width, level = (float(v) for v in cfg.INPUT.HU_WINDOW)
    image = lung_window(study.hu, width=width, level=level)[0]
    margin = size // 10
    return [image, np.ascontiguousarray(image[:, margin:size - margin])]


def export_files(predictor: OneShotPredictor, formats: Sequence[str], folder: str,
                 overwrite: bool = False, slices: Optional[List[np.ndarray]] = None,
                 config_file: str = "") -> Dict:
    """Export ``predictor``'s model in each of ``formats`` into ``folder`` and check every file
    against PyTorch on ``slices`` (default :func:`sample_slices`). The files are written under
    temporary names and renamed only when every one passed: a failed export leaves the folder
    as it was.

    Returns:
        ``export.json``'s content.
    Raises:
        UsageError: a file exists and ``overwrite`` is False; with ``overwrite``, a model file
            of a format not exported now exists (it would be left from other weights).
        ExportMismatch: an exported file's outputs differ beyond the tolerances.
    """
    targets = {fmt: os.path.join(folder, FILE_NAMES[fmt]) for fmt in formats}
    others = [os.path.join(folder, FILE_NAMES[f]) for f in FILE_NAMES if f not in targets]
    targets_all = list(targets.values()) + [os.path.join(folder, n)
                                            for n in ("config.yaml", "export.json")]
    existing = [p for p in targets_all if os.path.lexists(p)]
    if existing and not overwrite:
        raise UsageError(f"{existing[0]} exists: pass --overwrite to replace it")
    stale = [p for p in others if os.path.lexists(p)]
    if existing and stale:
        raise UsageError(f"{stale[0]} exists and would be left from an earlier export: export "
                         "every format again, or into another folder")
    make_folder(folder, "--output")
    slices = sample_slices(predictor.cfg) if slices is None else slices
    inputs = [predictor.model_input(s)["image"] for s in slices]
    flat = FlatInferenceModel(predictor.model)
    flat.probe(inputs[0])
    with torch.no_grad():
        expected = [flat(x) for x in inputs]
    report: Dict = {"config_file": config_file, "weights": predictor.cfg.MODEL.WEIGHTS,
                    "input_sizes": [list(x.shape[-2:]) for x in inputs], "files": {}}
    written: Dict[str, str] = {}  # final path -> temporary path
    try:
        for fmt, path in targets.items():
            tmp = written[path] = sibling_name(path, "tmp")
            description = export_description(predictor.cfg, flat, fmt)
            (export_torchscript if fmt == "torchscript" else export_onnx)(
                flat, inputs[0], tmp, description)
            exported = load_exported(tmp, fmt, predictor.cfg.MODEL.DEVICE)
            diffs = [output_differences(exported.names, [t.cpu() for t in e], exported(x))
                     for e, x in zip(expected, inputs)]
            worst = {n: max(d[n] for d in diffs) for n in exported.names}
            report["files"][os.path.basename(path)] = {
                "format": fmt, "outputs": exported.names, "max_difference": worst}
            logger.info("%s: %d outputs; largest differences from PyTorch over input sizes "
                        "%s: %s", path, len(exported.names), report["input_sizes"],
                        ", ".join(f"{n} {d:.2g}" for n, d in worst.items()))
            bad = outside_tolerance(worst)
            if bad:
                raise ExportMismatch(f"{path}: outputs {', '.join(bad)} differ from PyTorch "
                                     "beyond the tolerance (nothing written)")
        for path, tmp in written.items():
            os.replace(tmp, path)
    finally:
        for tmp in written.values():  # this call's own temporary files, when it failed
            if os.path.lexists(tmp):
                os.remove(tmp)
    atomic_write_text(os.path.join(folder, "config.yaml"), predictor.cfg.dump())
    atomic_write_json(os.path.join(folder, "export.json"), report)
    return report
