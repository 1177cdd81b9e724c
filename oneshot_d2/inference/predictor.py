"""``OneShotPredictor``: a trained model run on slices held in memory, in batches.

The preprocessing is the evaluation's: the project's input transforms (``INPUT.CLAHE``) and
Detectron2's test-time augmentation of the config (``ResizeShortestEdge(INPUT.MIN_SIZE_TEST,
INPUT.MAX_SIZE_TEST)``) applied as the dataset mapper applies them, the channel layout of
``INPUT.FORMAT``, and the model's own normalisation (``MODEL.PIXEL_NORM``). A slice therefore
gets the same ``image_cls`` here as through ``train_net.py --eval-only`` (tested), whatever the
batch size (tested).
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from ..checkpoint import AtomicCheckpointer, check_complete_model, check_weights
from ..config import load_config
from ..data.transforms import input_transforms
from ..errors import ConfigError
from ..export import model_kind

__all__ = ["OneShotPredictor", "SlicePredictor", "SlicePrediction", "class_names_of",
           "lesion_threshold", "to_model_channels"]

logger = logging.getLogger(__name__)


class SlicePrediction(dict):
    """One slice's outputs, on the CPU, in the input slice's pixel grid:

    - ``image_cls``: (C,) float32 NumPy class probabilities (summing to 1);
    - ``instances``: Detectron2 ``Instances`` with ``pred_boxes``, ``scores``, ``pred_classes``
      and ``pred_masks`` (n, H, W) bool (absent for models without lesion outputs);
    - ``image_cls_boxes`` (beta, 4) / ``image_cls_box_scores`` (beta,): the RoI batch the image
      head classified, and ``image_cls_explanation``: the head's explanation tensors (affinity
      ``roi_weights`` (beta,), LSTM ``attention_pos`` / ``attention_neg`` (beta,)), as NumPy
      arrays (one-shot models only).
    """


def class_names_of(cfg: CfgNode, key: str, count: int, fallback: str) -> List[str]:
    """Class names from the metadata of the config's datasets (``key``: ``image_classes`` for
    slice classes, ``thing_classes`` for lesion classes); ``fallback_0``... when none of the
    config's datasets is registered here with ``count`` names."""
    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.get("TRAIN_CLS", ())) \
        + list(cfg.DATASETS.TRAIN)
    for name in names:
        try:
            found = MetadataCatalog.get(name).get(key, None)
        except Exception:  # noqa: BLE001  a broken registration must not stop prediction
            found = None
        if found and len(found) == count:
            return [str(n) for n in found]
    if count:
        logger.warning("no dataset of the config (%s) is registered here with %d %s: the "
                       "classes are reported as %s_0..%s_%d", ", ".join(names) or "none",
                       count, key, fallback, fallback, count - 1)
    return [f"{fallback}_{i}" for i in range(count)]


def to_model_channels(image: np.ndarray, input_format: str) -> np.ndarray:
    """A uint8 slice in the channel layout the model was trained with (``INPUT.FORMAT``), as
    Detectron2's ``read_image`` gives it for a grayscale file.

    Args:
        image: (H, W) gray, or (H, W, C) already in ``input_format``.
    Returns:
        (H, W, 1) for ``"L"``, (H, W, 3) for ``"BGR"`` / ``"RGB"``.
    """
    if image.ndim == 3:
        return image
    if image.ndim != 2:
        raise ValueError(f"a slice must be (H, W) or (H, W, C), got shape {image.shape}")
    if input_format == "L":
        return image[:, :, None]
    if input_format in ("BGR", "RGB"):
        return np.repeat(image[:, :, None], 3, axis=2)
    raise ConfigError(f"INPUT.FORMAT {input_format!r} is not supported by the predictor "
                      "(L, BGR or RGB)")


def lesion_threshold(cfg: CfgNode, asked: Optional[float] = None) -> float:
    """The score above which a predictor keeps lesions: the box predictor's own threshold
    (``MODEL.ROI_HEADS.SCORE_THRESH_TEST``) or the one asked for (default
    ``PREDICT.LESION_SCORE_THRESH``), the higher; every backend applies it alike."""
    if asked is None:
        asked = cfg.PREDICT.LESION_SCORE_THRESH
    return max(float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST), float(asked))


class SlicePredictor:
    """What every predictor backend shares: the evaluation's preprocessing
    (:meth:`model_input`), batching (:meth:`predict`), the class names, and the outputs as
    :class:`SlicePrediction`. A backend implements :meth:`_run_model` (model inputs -> Detectron2
    post-processed outputs, one dict per slice).

    Args:
        cfg: a config with ``add_oneshot_config`` keys.
        kind: what the model computes (``oneshot``, ``rcnn`` or ``classifier``).
        batch_size: slices per call of :meth:`_run_model`.

    Attributes:
        backend: what runs the model (``tools/predict.py --backend``; in report.json).
    """

    backend = "torch"

    def __init__(self, cfg: CfgNode, kind: str, batch_size: int = 8):
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.cfg = cfg.clone()
        self.cfg.freeze()
        self.batch_size = batch_size
        self.input_format = self.cfg.INPUT.FORMAT
        self.augmentations = T.AugmentationList(input_transforms(self.cfg)
                                                + utils.build_augmentation(self.cfg, False))
        self.device = torch.device(self.cfg.MODEL.DEVICE)
        head_classes = self.cfg.MODEL.ONESHOT.NUM_IMAGE_CLASSES if kind != "rcnn" else 0
        self.image_classes = class_names_of(self.cfg, "image_classes", head_classes, "class")
        self.has_lesions = kind != "classifier"
        self.lesion_classes = class_names_of(
            self.cfg, "thing_classes", self.cfg.MODEL.ROI_HEADS.NUM_CLASSES, "lesion") \
            if self.has_lesions else []

    def model_input(self, image: np.ndarray) -> Dict:
        """The dataset mapper's inference dict of a uint8 slice ((H, W) or (H, W, C) in
        ``INPUT.FORMAT``): resized image tensor (C, H', W'), original ``height`` / ``width``."""
        if image.dtype != np.uint8:
            raise ValueError(f"slices must be uint8 (windowed), got {image.dtype}")
        image = to_model_channels(image, self.input_format)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return {"image": tensor, "height": image.shape[0], "width": image.shape[1]}

    def __call__(self, images: Sequence[np.ndarray]) -> List[SlicePrediction]:
        """Predict a list of uint8 slices (any number; run ``batch_size`` at a time)."""
        return list(self.predict(images))

    def predict(self, images: Iterable[np.ndarray]) -> Iterator[SlicePrediction]:
        """Predictions of ``images`` in order, computed ``batch_size`` slices at a time."""
        batch: List[np.ndarray] = []
        for image in images:
            batch.append(image)
            if len(batch) == self.batch_size:
                yield from self._run(batch)
                batch = []
        if batch:
            yield from self._run(batch)

    def _run(self, images: List[np.ndarray]) -> List[SlicePrediction]:
        return [self._to_cpu(out) for out in self._run_model([self.model_input(im)
                                                               for im in images])]

    def _run_model(self, inputs: List[Dict]) -> List[Dict]:
        """Outputs of the model on :meth:`model_input` dicts, as Detectron2's post-processed
        inference gives them (one dict per input)."""
        raise NotImplementedError

    @staticmethod
    def _to_cpu(out: Dict) -> SlicePrediction:
        pred = SlicePrediction()
        if "image_cls" in out:  # not for the plain Mask R-CNN baseline
            pred["image_cls"] = out["image_cls"].float().cpu().numpy()
        if "instances" in out:
            pred["instances"] = out["instances"].to("cpu")
        if "image_cls_boxes" in out:
            pred["image_cls_boxes"] = out["image_cls_boxes"].float().cpu().numpy()
            pred["image_cls_box_scores"] = out["image_cls_box_scores"].float().cpu().numpy()
            pred["image_cls_explanation"] = {
                k: v.float().cpu().numpy() for k, v in out["image_cls_explanation"].items()}
        return pred


class OneShotPredictor(SlicePredictor):
    """Run a trained oneshot_d2 model (one-shot, Mask R-CNN baseline or plain classifier) on
    slices.

    Batched (``batch_size`` slices per forward pass), in eval mode under
    ``torch.inference_mode``, on ``cfg.MODEL.DEVICE`` (``cpu`` or ``cuda``). Deterministic: a
    slice's outputs do not depend on the batch it is in (the models run each batch in groups
    of equal size; GroupNorm / eval-mode BatchNorm only).

    Args:
        cfg: a config with ``add_oneshot_config`` keys and ``MODEL.WEIGHTS`` set.
        batch_size: slices per forward pass.
        allow_random_weights: run with ``MODEL.WEIGHTS`` empty (tests only: the outputs are
            meaningless).
        lesion_score_thresh: lesion detections scoring below it are dropped inside the model,
            before their masks are pasted at full size (default
            ``PREDICT.LESION_SCORE_THRESH``, the reports' threshold). The kept detections are
            exactly those ``--eval-only`` gives with that score or more; ``image_cls`` does not
            depend on it (the classification branch scores its own proposals).

    Raises:
        ConfigError / CheckpointError: empty, missing or unreadable weights, or a checkpoint
            that does not hold this config's model (one line naming the file).
    """

    def __init__(self, cfg: CfgNode, batch_size: int = 8, allow_random_weights: bool = False,
                 lesion_score_thresh: Optional[float] = None):
        if batch_size < 1:  # before the model is built
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        check_weights(cfg, eval_only=True, allow_random=allow_random_weights)
        model = build_model(cfg)
        model.eval()
        checkpointer = AtomicCheckpointer(model)
        if cfg.MODEL.WEIGHTS:
            checkpointer.load(cfg.MODEL.WEIGHTS)
            check_complete_model(checkpointer, cfg, allow_random=allow_random_weights)
        super().__init__(cfg, model_kind(model), batch_size)
        if self.cfg.PREDICT.CHANNELS_LAST:
            # 4-D weights in channels-last order: the convolutions then run in it (oneDNN /
            # cuDNN pick the layout from the weights), whatever the input's layout
            model.to(memory_format=torch.channels_last)
        self.model = model
        box_predictor = getattr(getattr(self.model, "roi_heads", None), "box_predictor", None)
        if box_predictor is not None and hasattr(box_predictor, "test_score_thresh"):
            box_predictor.test_score_thresh = lesion_threshold(self.cfg, lesion_score_thresh)

    @classmethod
    def from_config_file(cls, config_file: str, weights: Optional[str] = None,
                         opts: Sequence[str] = (), **kwargs) -> "OneShotPredictor":
        """The predictor of ``config_file`` (+ ``opts`` ``KEY VALUE`` pairs) with ``weights``
        (default: the config's ``MODEL.WEIGHTS``)."""
        cfg = load_config(config_file, opts)
        if weights is not None:
            cfg.MODEL.WEIGHTS = weights
        return cls(cfg, **kwargs)

    def _run_model(self, inputs: List[Dict]) -> List[Dict]:
        with torch.inference_mode():
            return self.model(inputs)
