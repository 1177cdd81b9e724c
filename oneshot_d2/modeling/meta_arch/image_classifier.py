"""``CTImageClassifier``: the plain CNN slice classifier the one-shot model is compared with.

Detectron2's backbone (the same builder and config as the one-shot model's, e.g. ResNet-18-FPN
with GroupNorm), global average pooling of ``MODEL.IMAGE_CLASSIFIER.IN_FEATURES``, one linear
layer. Trained on classification datasets (``image_label`` items) by the same trainer, loader and
``ClassificationEvaluator``; its outputs have the one-shot model's ``image_cls``.

Its checkpoint's ``backbone.*`` weights have the one-shot model's names, so it can warm-start a
one-shot model's backbone (``MODEL.WEIGHTS``: the other keys are reported and skipped).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Union

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.utils.events import get_event_storage
from torch import nn

from ...errors import ConfigError
from ..image_heads import image_cls_loss
from .ct_rcnn import (
    PIXEL_NORMS,
    add_temperature,
    calibrated_softmax,
    normalize_images,
    run_grouped_by_size,
)

__all__ = ["CTImageClassifier", "log_train_accuracy"]


def log_train_accuracy(logits: torch.Tensor, labels: torch.Tensor,
                       name: str = "image_cls/train_accuracy") -> None:
    """Put the training batch's classification accuracy into the event storage (metrics.json,
    TensorBoard; with several processes, rank 0's batch), so that a head stuck at the class
    prior shows in the log.

    Args:
        logits: (N, C) training-mode logits.
        labels: (N,) class indices.
    """
    try:
        storage = get_event_storage()
    except AssertionError:  # called outside a trainer
        return
    acc = (logits.detach().argmax(1) == labels).float().mean()
    storage.put_scalar(name, acc.item())


def _mean_over_image(fmap: torch.Tensor, image_size: Sequence[Union[int, torch.Tensor]],
                     stride: int) -> torch.Tensor:
    """(C, h, w) feature map -> (C,) mean over the cells that hold any of the image
    (ceil(size / stride), at least one; never padding alone). ``image_size`` (height, width)
    holds ints, or 0-dim tensors while tracing: the extent is a mask, not a slice, so a traced
    model pools the extent of every input size."""
    extent = [(torch.as_tensor(v, device=fmap.device) + stride - 1).div(
        stride, rounding_mode="floor").clamp(min=1) for v in image_size]
    rows = torch.arange(fmap.shape[1], device=fmap.device) < extent[0]
    cols = torch.arange(fmap.shape[2], device=fmap.device) < extent[1]
    cells = (rows[:, None] & cols[None, :]).to(fmap.dtype)
    return (fmap * cells).sum(dim=(1, 2)) / cells.sum()


@META_ARCH_REGISTRY.register()
class CTImageClassifier(nn.Module):
    """Backbone + global average pooling + linear layer.

    Training input: dataset-mapper dicts with ``image`` and ``image_label``; returns
    ``{"loss_image_cls": ...}`` (the one-shot model's per-class BCE, same reduction option).
    Inference: ``[{"image_cls": (C,) softmax probabilities}, ...]`` (logits divided by the
    temperature ``image_cls_temperature``, 1 until calibrated), images of different sizes run
    separately (zero padding would change GroupNorm statistics and the pooled means).
    """

    @configurable
    def __init__(self, *, backbone: Backbone, in_features: Sequence[str], num_classes: int,
                 pixel_norm: str, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 loss_reduction: str = "sum", dropout: float = 0.0):
        """
        Args:
            backbone: a Detectron2 backbone.
            in_features: backbone outputs that are pooled and concatenated.
            num_classes: number of slice classes.
            pixel_norm: ``MODEL.PIXEL_NORM`` (``per_image`` or ``mean_std``).
            pixel_mean / pixel_std: used with ``mean_std``.
            loss_reduction: ``sum`` or ``mean`` over classes of the per-class BCE.
            dropout: dropout probability before the linear layer.
        """
        super().__init__()
        if pixel_norm not in PIXEL_NORMS:
            raise ConfigError(f"MODEL.PIXEL_NORM must be one of {PIXEL_NORMS}, got {pixel_norm!r}")
        shapes = backbone.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing or not in_features:
            raise ConfigError(f"MODEL.IMAGE_CLASSIFIER.IN_FEATURES {list(in_features)}: the "
                             f"backbone outputs {sorted(shapes)}")
        self.backbone = backbone
        self.in_features = list(in_features)
        self.strides = {f: shapes[f].stride for f in self.in_features}
        self.pixel_norm = pixel_norm
        self.loss_reduction = loss_reduction
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(sum(shapes[f].channels for f in self.in_features),
                                    num_classes)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        add_temperature(self)

    @classmethod
    def from_config(cls, cfg):
        return {
            "backbone": build_backbone(cfg),
            "in_features": cfg.MODEL.IMAGE_CLASSIFIER.IN_FEATURES,
            "num_classes": cfg.MODEL.ONESHOT.NUM_IMAGE_CLASSES,
            "pixel_norm": cfg.MODEL.PIXEL_NORM,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "loss_reduction": cfg.MODEL.ONESHOT.IMAGE_HEAD.LOSS_REDUCTION,
            "dropout": cfg.MODEL.IMAGE_CLASSIFIER.DROPOUT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_head(self) -> nn.Module:
        """The trained classification layer (``SOLVER.IMAGE_HEAD_LR_FACTOR`` applies to it)."""
        return self.classifier

    def logits(self, batched_inputs: List[Dict]) -> torch.Tensor:
        """(N, C) logits of :meth:`pooled_features`."""
        return self.classifier(self.dropout(self.pooled_features(batched_inputs)))

    def pooled_features(self, batched_inputs: List[Dict]) -> torch.Tensor:
        """(N, D) backbone features of ``IN_FEATURES``, each averaged over the image's own
        (unpadded) extent and concatenated (D = the features' summed channels)."""
        images = normalize_images(batched_inputs, self.pixel_norm, self.pixel_mean,
                                  self.pixel_std, self.backbone.size_divisibility)
        features = self.backbone(images.tensor)
        pooled = []
        for name in self.in_features:
            fmap = features[name]  # (N, C_f, h, w)
            rows = [_mean_over_image(fmap[i], size, self.strides[name])
                    for i, size in enumerate(images.image_sizes)]
            pooled.append(torch.stack(rows))
        return torch.cat(pooled, dim=1)

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        if any("image_label" not in x for x in batched_inputs):
            raise ConfigError("CTImageClassifier trains on classification items ('image_label'); "
                             "put classification datasets in DATASETS.TRAIN")
        logits = self.logits(batched_inputs)
        labels = torch.as_tensor([int(x["image_label"]) for x in batched_inputs],
                                 device=logits.device)
        log_train_accuracy(logits, labels)
        return {"loss_image_cls": image_cls_loss(logits, labels, self.loss_reduction)}

    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """``[{"image_cls": (C,) probabilities}]`` in input order."""
        def run(idx: List[int]) -> List[Dict[str, torch.Tensor]]:
            probs = calibrated_softmax(self.logits([batched_inputs[i] for i in idx]),
                                       self.image_cls_temperature)
            return [{"image_cls": p} for p in probs]

        return run_grouped_by_size(batched_inputs, run)
