"""``OneShotROIHeads``: Mask R-CNN RoI heads plus a frozen classification box + mask branch.

The segmentation branch (``box_head``, ``box_predictor``, ``mask_head``) trains as usual. The
classification branch (``cls_box_head``, ``cls_box_predictor``, ``cls_mask_head``) is built with
the same Detectron2 builders, so its state dicts match the segmentation branch's exactly; it is
frozen (``requires_grad=False``, absent from the optimizer, always in eval mode) and changes only
through :meth:`OneShotROIHeads.copy_seg_to_cls`. It stays differentiable with respect to the
features: the image loss reaches the backbone through RoIAlign of the selected boxes, as in the
papers. The poolers are parameter-free and shared.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, Instances
from torch import nn

from ...data.errors import ConfigError
from .roi_batch import PADDING_MODES, select_roi_batch

__all__ = ["OneShotROIHeads"]


def _mask_head_features(mask_head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a Detectron2 ``MaskRCNNConvUpsampleHead``-style head up to, not including, its
    ``predictor``: (R, C, 14, 14) pooled features -> (R, C', 28, 28) mask features."""
    predictor = getattr(mask_head, "predictor", None)
    if predictor is None or not isinstance(mask_head, nn.Sequential):
        raise TypeError(
            f"{type(mask_head).__name__}: the classification branch needs a sequential mask head "
            "with a final `predictor` layer (Detectron2's MaskRCNNConvUpsampleHead)")
    for layer in mask_head:
        if layer is predictor:
            break
        x = layer(x)
    return x


@ROI_HEADS_REGISTRY.register()
class OneShotROIHeads(StandardROIHeads):
    """``StandardROIHeads`` + the one-shot classification branch (see module docstring)."""

    @configurable
    def __init__(self, *, cls_box_head: nn.Module, cls_box_predictor: nn.Module,
                 cls_mask_head: nn.Module, roi_batch_size: int = 8, cls_nms_thresh: float = 0.25,
                 order_by_distance: bool = False, roi_padding: str = "cyclic", **kwargs):
        """
        Args:
            cls_box_head, cls_box_predictor, cls_mask_head: classification-branch modules with
                the same architecture as ``box_head``, ``box_predictor``, ``mask_head``.
            roi_batch_size: beta, RoIs per image given to the image head.
            cls_nms_thresh: class-wise NMS IoU of the RoI batch selection.
            order_by_distance: order the RoI batch by distance from the image origin.
            roi_padding: ``cyclic`` or ``original``, see :mod:`.roi_batch`.
            kwargs: ``StandardROIHeads`` arguments (``mask_on`` must be True).
        """
        super().__init__(**kwargs)
        if not self.mask_on:
            raise ConfigError("OneShotROIHeads needs MODEL.MASK_ON: True (mask features)")
        if roi_padding not in PADDING_MODES:
            raise ConfigError(f"MODEL.ONESHOT.ROI_PADDING must be one of {PADDING_MODES}")
        self.cls_box_head = cls_box_head
        self.cls_box_predictor = cls_box_predictor
        self.cls_mask_head = cls_mask_head
        self.roi_batch_size = roi_batch_size
        self.cls_nms_thresh = cls_nms_thresh
        self.order_by_distance = order_by_distance
        self.roi_padding = roi_padding
        for module in self.cls_branch_modules():
            module.requires_grad_(False)
            module.eval()

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        ret.update(cls._init_cls_branches(cfg, input_shape))
        one = cfg.MODEL.ONESHOT
        ret.update(roi_batch_size=one.ROI_BATCH_SIZE, cls_nms_thresh=one.CLS_NMS_THRESH,
                   order_by_distance=one.ORDER_BY_DISTANCE, roi_padding=one.ROI_PADDING)
        return ret

    @classmethod
    def _init_cls_branches(cls, cfg, input_shape):
        box = cls._init_box_head(cfg, input_shape)
        mask = cls._init_mask_head(cfg, input_shape)
        return {"cls_box_head": box["box_head"], "cls_box_predictor": box["box_predictor"],
                "cls_mask_head": mask["mask_head"]}

    # ----------------------------------------------------------------------------------------
    def seg_branch_modules(self) -> Tuple[nn.Module, nn.Module, nn.Module]:
        return self.box_head, self.box_predictor, self.mask_head

    def cls_branch_modules(self) -> Tuple[nn.Module, nn.Module, nn.Module]:
        return self.cls_box_head, self.cls_box_predictor, self.cls_mask_head

    def train(self, mode: bool = True):
        """Like ``nn.Module.train``, but the frozen classification branch stays in eval mode."""
        super().train(mode)
        for module in self.cls_branch_modules():
            module.eval()
        return self

    @torch.no_grad()
    def copy_seg_to_cls(self) -> None:
        """Copy the segmentation branch's weights into the classification branch, module to
        module (``load_state_dict``: separate storage, never shared)."""
        for seg, cls_ in zip(self.seg_branch_modules(), self.cls_branch_modules()):
            cls_.load_state_dict(seg.state_dict())

    # ----------------------------------------------------------------------------------------
    def forward_cls_features(self, features: Dict[str, torch.Tensor],
                             proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        """The classification branch: RoI batch selection, then mask features.

        Args:
            features: backbone/FPN maps, each (N, C, Hi, Wi).
            proposals: N RPN ``Instances`` with ``proposal_boxes`` and ``image_size``.

        Returns:
            dict with
            ``mask_features`` (N, beta, C', 28, 28): classification-branch mask features,
            differentiable w.r.t. ``features``;
            ``boxes`` (N, beta, 4), ``scores`` (N, beta), ``classes`` (N, beta): the RoI batch;
            ``num_kept`` (N,): distinct boxes before padding.
        """
        batches = self._select_roi_batches(features, proposals)
        box_features = self.mask_pooler([features[f] for f in self.mask_in_features],
                                        [Boxes(b.boxes) for b in batches])
        mask_features = _mask_head_features(self.cls_mask_head, box_features)
        n, beta = len(batches), self.roi_batch_size
        return {
            "mask_features": mask_features.view(n, beta, *mask_features.shape[1:]),
            "boxes": torch.stack([b.boxes for b in batches]),
            "scores": torch.stack([b.scores for b in batches]),
            "classes": torch.stack([b.classes for b in batches]),
            "num_kept": torch.tensor([b.num_kept for b in batches]),
        }

    @torch.no_grad()
    def _select_roi_batches(self, features, proposals: List[Instances]):
        """Score every proposal with the frozen classification box branch and select the RoI
        batch of each image (non-differentiable, as in the papers). An image without proposals
        gets the whole-image box, like one where no box survives."""
        x = self.box_pooler([features[f] for f in self.box_in_features],
                            [p.proposal_boxes for p in proposals])
        predictions = self.cls_box_predictor(self.cls_box_head(x))
        boxes = self.cls_box_predictor.predict_boxes(predictions, proposals)
        probs = self.cls_box_predictor.predict_probs(predictions, proposals)
        batches = []
        for img_boxes, img_probs, p in zip(boxes, probs, proposals):
            fg = img_probs[:, :-1]  # Detectron2 puts background last
            # (R, 4K) or (R, 4) class-agnostic; explicit sizes: R may be 0 (no proposal)
            img_boxes = img_boxes.view(len(p), img_boxes.shape[1] // 4, 4)
            if img_boxes.shape[1] != fg.shape[1]:  # class-agnostic box regression
                img_boxes = img_boxes.expand(-1, fg.shape[1], 4)
            per_class = Boxes(img_boxes.reshape(-1, 4))
            per_class.clip(p.image_size)
            batches.append(select_roi_batch(
                per_class.tensor.view(-1, fg.shape[1], 4), fg, p.image_size,
                self.roi_batch_size, self.cls_nms_thresh, self.order_by_distance,
                self.roi_padding))
        return batches
