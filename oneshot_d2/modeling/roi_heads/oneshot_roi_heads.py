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

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, Instances
from torch import nn

from ...errors import ConfigError
from .roi_batch import PADDING_MODES, RoIBatch, select_roi_batch

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
                 order_by_distance: bool = False, roi_padding: str = "cyclic",
                 whole_image_roi: bool = False, **kwargs):
        """
        Args:
            cls_box_head, cls_box_predictor, cls_mask_head: classification-branch modules with
                the same architecture as ``box_head``, ``box_predictor``, ``mask_head``.
            roi_batch_size: beta, RoIs per image given to the image head.
            cls_nms_thresh: class-wise NMS IoU of the RoI batch selection.
            order_by_distance: order the RoI batch by distance from the image origin.
            roi_padding: ``cyclic`` or ``original``, see :mod:`.roi_batch`.
            whole_image_roi: the first RoI of every batch is the whole image
                (``MODEL.ONESHOT.WHOLE_IMAGE_ROI``, not in the papers).
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
        self.whole_image_roi = whole_image_roi
        for module in self.cls_branch_modules():
            module.requires_grad_(False)
            module.eval()

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        ret.update(cls._init_cls_branches(cfg, input_shape))
        one = cfg.MODEL.ONESHOT
        ret.update(roi_batch_size=one.ROI_BATCH_SIZE, cls_nms_thresh=one.CLS_NMS_THRESH,
                   order_by_distance=one.ORDER_BY_DISTANCE, roi_padding=one.ROI_PADDING,
                   whole_image_roi=one.WHOLE_IMAGE_ROI)
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
    def cls_scores_equal_seg_scores(self) -> bool:
        """True when the frozen classification box branch holds exactly the segmentation box
        branch's weights (after a copy, until the next optimizer step), so both score every
        proposal alike. Compared once per change: the key is each tensor's storage and
        in-place version counter, which ``copy_``, ``load_state_dict`` and optimizer steps
        bump."""
        if self.box_head.training:  # train-mode layers (dropout, BN) may differ from eval mode
            return False
        tensors = [t for m in (self.box_head, self.box_predictor, self.cls_box_head,
                               self.cls_box_predictor) for t in m.state_dict().values()]
        key = tuple((t.data_ptr(), t._version, t.device) for t in tensors)
        if key != getattr(self, "_scores_equal_key", None):
            seg = list(self.box_head.state_dict().values()) \
                + list(self.box_predictor.state_dict().values())
            cls_ = list(self.cls_box_head.state_dict().values()) \
                + list(self.cls_box_predictor.state_dict().values())
            self._scores_equal = len(seg) == len(cls_) and all(
                a.shape == b.shape and torch.equal(a, b) for a, b in zip(seg, cls_))
            self._scores_equal_key = key
        return self._scores_equal

    def forward_cls_features(self, features: Dict[str, torch.Tensor],
                             proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        """The classification branch alone: RoI batch selection, then mask features.

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
        with torch.no_grad():
            box_features = self._pool_proposals(features, proposals)
            predictions = self.cls_box_predictor(self.cls_box_head(box_features))
        return self._cls_mask_features(features, self._select_roi_batches(predictions,
                                                                           proposals))

    def inference_both(self, features: Dict[str, torch.Tensor], proposals: List[Instances],
                       with_instances: bool = True
                       ) -> Tuple[Optional[List[Instances]], Dict[str, torch.Tensor]]:
        """Inference of both branches without work done twice: the proposals' RoI pooling is
        shared (the same boxes on the same maps), the classification branch reuses the
        segmentation branch's scores when its weights are the same
        (:meth:`cls_scores_equal_seg_scores`), and ``with_instances=False`` (only the slice
        class wanted) runs no segmentation box inference and no mask head at all.

        Returns:
            ``(instances, rois)``: what ``StandardROIHeads.forward`` returns at inference (None
            when ``with_instances`` is False) and :meth:`forward_cls_features`'s dict; both
            equal to running the two separately (tested).
        """
        assert not self.training, "inference_both runs in eval mode"
        box_features = self._pool_proposals(features, proposals)
        shared = self.cls_scores_equal_seg_scores()
        seg_predictions = None
        if with_instances or shared:
            seg_predictions = self.box_predictor(self.box_head(box_features))
        instances = None
        if with_instances:
            instances, _ = self.box_predictor.inference(seg_predictions, proposals)
            instances = self.forward_with_given_boxes(features, instances)
        cls_predictions = seg_predictions if shared else \
            self.cls_box_predictor(self.cls_box_head(box_features))
        del box_features
        batches = self._select_roi_batches(cls_predictions, proposals)
        return instances, self._cls_mask_features(features, batches)

    def _pool_proposals(self, features: Dict[str, torch.Tensor],
                        proposals: List[Instances]) -> torch.Tensor:
        """(R_total, C, 7, 7) box-pooled features of every proposal of every image."""
        return self.box_pooler([features[f] for f in self.box_in_features],
                               [p.proposal_boxes for p in proposals])

    def _cls_mask_features(self, features: Dict[str, torch.Tensor],
                           batches: List[RoIBatch]) -> Dict[str, torch.Tensor]:
        """The classification mask branch on the selected RoI batches (differentiable)."""
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
    def _select_roi_batches(self, predictions, proposals: List[Instances]) -> List[RoIBatch]:
        """The RoI batch of each image from the classification box branch's ``predictions``
        (class scores and box deltas of every proposal; non-differentiable, as in the papers).
        An image without proposals gets the whole-image box, like one where no box
        survives."""
        boxes = self.cls_box_predictor.predict_boxes(predictions, proposals)
        probs = self.cls_box_predictor.predict_probs(predictions, proposals)
        batches = []
        for img_boxes, img_probs, p in zip(boxes, probs, proposals):
            fg = img_probs[:, :-1]  # Detectron2 puts background last
            # (R, 4K) or (R, 4) class-agnostic; explicit sizes: R may be 0 (no proposal), and
            # a tensor's shape, not len(p), keeps R symbolic in a traced (exported) model
            img_boxes = img_boxes.view(img_probs.shape[0], img_boxes.shape[1] // 4, 4)
            if img_boxes.shape[1] != fg.shape[1]:  # class-agnostic box regression
                img_boxes = img_boxes.expand(-1, fg.shape[1], 4)
            per_class = Boxes(img_boxes.reshape(-1, 4))
            per_class.clip(p.image_size)
            batches.append(select_roi_batch(
                per_class.tensor.view(-1, fg.shape[1], 4), fg, p.image_size,
                self.roi_batch_size, self.cls_nms_thresh, self.order_by_distance,
                self.roi_padding, whole_image=self.whole_image_roi))
        return batches
