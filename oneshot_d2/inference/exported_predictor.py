"""``ExportedPredictor``: a model exported by ``tools/export_model.py`` (TorchScript or ONNX) run
on slices, with the same preprocessing and outputs as :class:`~.predictor.OneShotPredictor`
(``tools/predict.py --backend torchscript|onnxruntime``)."""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.modeling.postprocessing import detector_postprocess

from ..errors import CheckpointError, ConfigError
from ..export import KINDS, ExportedModel, config_identity, unflatten
from ..modeling.meta_arch import rescale_roi_boxes
from .predictor import SlicePredictor, lesion_threshold

__all__ = ["ExportedPredictor", "BACKENDS", "BACKEND_FORMATS"]

logger = logging.getLogger(__name__)

# tools/predict.py --backend: "torch" runs the checkpoint in PyTorch (OneShotPredictor).
BACKENDS = ("torch", "torchscript", "onnxruntime")
BACKEND_FORMATS = {"torchscript": "torchscript", "onnxruntime": "onnx"}


class ExportedPredictor(SlicePredictor):
    """Run an exported file on slices, one slice per call of the exported graph.

    Args:
        cfg: the config the model was exported from (preprocessing, class names); its
            architecture and class counts must match the file's description.
        path: the exported file (``model.ts`` or ``model.onnx``).
        backend: ``torchscript`` or ``onnxruntime``.
        batch_size: slices taken at a time from the input (the graph runs them one by one).
        lesion_score_thresh: as :class:`~.predictor.OneShotPredictor`'s; it may not be below
            the threshold the file was exported with (those detections are not in it).
        threads: ONNX Runtime's intra-op threads (default: torch's thread count).

    Raises:
        CheckpointError: a missing or unreadable file, one not written by oneshot_d2's export.
        ConfigError: a file that does not hold ``cfg``'s model, a threshold below the file's.
    """

    def __init__(self, cfg: CfgNode, path: str, backend: str, batch_size: int = 8,
                 lesion_score_thresh: Optional[float] = None, threads: Optional[int] = None):
        if backend not in BACKEND_FORMATS:
            raise ConfigError(f"exported backend must be one of {sorted(BACKEND_FORMATS)}, "
                              f"got {backend!r}")
        self.exported = ExportedModel(path, BACKEND_FORMATS[backend], cfg.MODEL.DEVICE,
                                      torch.get_num_threads() if threads is None else threads)
        desc = self.exported.description
        _check_matches(cfg, desc, path)
        super().__init__(cfg, desc["kind"], batch_size)
        self.backend = backend
        thresh = lesion_threshold(self.cfg, lesion_score_thresh)
        exported_thresh = float(desc.get("lesion_score_thresh", 0.0))
        if self.has_lesions and thresh < exported_thresh - 1e-12:
            raise ConfigError(f"{path} was exported with lesion score threshold "
                              f"{exported_thresh:g}: it holds no detection below it (asked "
                              f"for {thresh:g}); export again with PREDICT.LESION_SCORE_THRESH "
                              "and MODEL.ROI_HEADS.SCORE_THRESH_TEST at most the lower value")
        self.lesion_score_thresh = thresh

    def _run_model(self, inputs: List[Dict]) -> List[Dict]:
        outputs = []
        for x in inputs:
            size = tuple(x["image"].shape[-2:])
            out = unflatten(self.exported.names, self.exported(x["image"]), size)
            if "instances" in out:
                inst = out["instances"]
                # Detectron2's box predictor keeps scores strictly above its threshold
                inst = inst[inst.scores > self.lesion_score_thresh]
                out["instances"] = detector_postprocess(inst, x["height"], x["width"])
            if "image_cls_boxes" in out:
                out["image_cls_boxes"] = rescale_roi_boxes(out["image_cls_boxes"], size,
                                                           x["height"], x["width"])
            outputs.append(out)
        return outputs


def _check_matches(cfg: CfgNode, desc: Dict, path: str) -> None:
    """ConfigError unless the exported file holds ``cfg``'s architecture and classes."""
    if desc.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: unknown model kind {desc.get('kind')!r}")
    wrong = [f"{k} {desc.get(k)!r} (config: {v!r})"
             for k, v in config_identity(cfg, desc["kind"]).items() if desc.get(k) != v]
    if wrong:
        raise ConfigError(f"{path} does not hold this config's model: " + ", ".join(wrong))
