"""``CTRCNN``: Detectron2's ``GeneralizedRCNN`` with oneshot_d2's input normalisation
(``MODEL.PIXEL_NORM``) and inference that does not depend on what else is in the batch.

It is the plain Mask R-CNN baseline of this project and the base class of ``OneShotRCNN``, so the
baseline and the one-shot model always see the same input.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.config.defaults import _C as D2_DEFAULTS
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import ImageList, Instances

from ...config import PIXEL_NORMS
from ...errors import ConfigError

__all__ = ["CTRCNN", "PIXEL_NORMS", "standardize_per_image", "normalize_images",
           "run_grouped_by_size", "TEMPERATURE_BUFFER", "add_temperature", "calibrated_softmax"]

logger = logging.getLogger(__name__)

# "per_image": every image z-scored per channel with its own mean / std (the papers' "global
# mean / std" is per image; the released code); "mean_std": Detectron2's PIXEL_MEAN / PIXEL_STD.


def standardize_per_image(image: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Z-score one image per channel.

    Args:
        image: (C, H, W) float tensor.
        eps: lower bound of the standard deviation (a constant image maps to 0).
    Returns:
        (C, H, W) tensor whose every channel has mean 0 and (unbiased) std 1.
    """
    mean = image.mean(dim=(1, 2), keepdim=True)
    std = image.std(dim=(1, 2), keepdim=True).clamp(min=eps)
    return (image - mean) / std


def normalize_images(batched_inputs: List[Dict], pixel_norm: str, pixel_mean: torch.Tensor,
                     pixel_std: torch.Tensor, size_divisibility: int) -> ImageList:
    """The model input of ``MODEL.PIXEL_NORM``: normalised images padded into one batch.

    Args:
        batched_inputs: dataset-mapper dicts with ``image`` (C, H, W).
        pixel_norm: ``per_image`` (z-score each image per channel) or ``mean_std``.
        pixel_mean / pixel_std: (C, 1, 1) on the model's device, used with ``mean_std``.
        size_divisibility: the backbone's padding multiple.
    Returns:
        ImageList of (N, C, H', W') on ``pixel_mean``'s device.
    """
    if pixel_norm not in PIXEL_NORMS:
        raise ConfigError(f"MODEL.PIXEL_NORM must be one of {PIXEL_NORMS}, got {pixel_norm!r}")
    device = pixel_mean.device
    images = [x["image"].to(device).float() for x in batched_inputs]
    if pixel_norm == "per_image":
        images = [standardize_per_image(x) for x in images]
    else:
        images = [(x - pixel_mean) / pixel_std for x in images]
    return ImageList.from_tensors(images, size_divisibility)


# Name of the slice classifiers' temperature (a persistent buffer: saved in the checkpoint).
TEMPERATURE_BUFFER = "image_cls_temperature"


def add_temperature(module: torch.nn.Module) -> None:
    """Register the scalar temperature buffer (1 = the uncalibrated softmax) on ``module``.

    Temperature scaling (Guo et al. 2017) divides the logits by T > 0 before the softmax: the
    predicted class and the ranking (ROC-AUC) are unchanged, the probabilities calibrated. T is
    fitted on a validation split (``tools/calibrate.py``) and saved with the weights, so every
    user of the checkpoint (evaluation, ``tools/predict.py``) gets the calibrated probabilities.
    """
    module.register_buffer(TEMPERATURE_BUFFER, torch.ones(()))


def calibrated_softmax(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``softmax(logits / T)``.

    Args:
        logits: (N, C) logits.
        temperature: scalar T > 0.
    Returns:
        (N, C) probabilities, each row summing to 1.
    """
    return torch.softmax(logits / temperature, dim=1)


def run_grouped_by_size(batched_inputs: List[Dict], run: Callable[[List[int]], List]) -> List:
    """Call ``run(indices)`` once per group of equal-size images; outputs in input order.

    ``ImageList`` pads a batch to its largest image; with GroupNorm (or any statistics over the
    padded map) the padding would make an image's output depend on its batch neighbours.
    """
    groups: "OrderedDict[tuple, List[int]]" = OrderedDict()
    for i, x in enumerate(batched_inputs):
        groups.setdefault(tuple(x["image"].shape[-2:]), []).append(i)
    outputs: List = [None] * len(batched_inputs)
    for idx in groups.values():
        for i, r in zip(idx, run(idx)):
            outputs[i] = r
    return outputs


@META_ARCH_REGISTRY.register()
class CTRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` + ``MODEL.PIXEL_NORM`` + batch-composition-independent inference.

    Inference runs the images of a batch in groups of equal size: ``ImageList`` pads a batch to
    its largest image, and with GroupNorm (or any norm whose statistics cover the padded map)
    the padding would change an image's outputs depending on its batch neighbours. Grouping makes
    every image's padding depend on its own size only; a batch of equal-size images is one
    forward pass, as before.
    """

    @configurable
    def __init__(self, *, pixel_norm: str = "per_image", **kwargs):
        """
        Args:
            pixel_norm: one of :data:`PIXEL_NORMS`.
            kwargs: ``GeneralizedRCNN`` arguments (``pixel_mean`` / ``pixel_std`` are used only
                with ``pixel_norm="mean_std"``).
        """
        super().__init__(**kwargs)
        if pixel_norm not in PIXEL_NORMS:
            raise ConfigError(f"MODEL.PIXEL_NORM must be one of {PIXEL_NORMS}, got {pixel_norm!r}")
        self.pixel_norm = pixel_norm

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["pixel_norm"] = cfg.MODEL.PIXEL_NORM
        unused = [k for k in ("PIXEL_MEAN", "PIXEL_STD")
                  if list(cfg.MODEL[k]) != list(D2_DEFAULTS.MODEL[k])]
        if cfg.MODEL.PIXEL_NORM == "per_image" and unused:
            logger.warning("MODEL.%s set but unused: MODEL.PIXEL_NORM is 'per_image' (use "
                           "'mean_std' to normalise with them)", " / MODEL.".join(unused))
        return ret

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise (``MODEL.PIXEL_NORM``) and pad to ``size_divisibility``."""
        return normalize_images(batched_inputs, self.pixel_norm, self.pixel_mean,
                                self.pixel_std, self.backbone.size_divisibility)

    def inference(self, batched_inputs: List[Dict],
                  detected_instances: Optional[List[Instances]] = None,
                  do_postprocess: bool = True):
        """``GeneralizedRCNN.inference``, run per group of equal-size images (class docstring);
        outputs in input order."""
        def run(idx: List[int]) -> List:
            given = None if detected_instances is None else [detected_instances[i] for i in idx]
            return self._inference_same_size([batched_inputs[i] for i in idx], given,
                                             do_postprocess)

        return run_grouped_by_size(batched_inputs, run)

    def _inference_same_size(self, batched_inputs: List[Dict],
                             detected_instances: Optional[List[Instances]],
                             do_postprocess: bool):
        """Inference on images of one size (Detectron2's ``GeneralizedRCNN.inference``)."""
        return super().inference(batched_inputs, detected_instances, do_postprocess)
