"""``OneShotRCNN``: Mask R-CNN + slice classification through the RoI batch's mask features."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.structures import ImageList, Instances

from ...errors import ConfigError
from ..image_heads import build_image_head, image_cls_loss
from ..roi_heads import OneShotROIHeads
from .ct_rcnn import CTRCNN, add_temperature, calibrated_softmax
from .image_classifier import log_train_accuracy

__all__ = ["OneShotRCNN", "scale_grad", "image_cls_only", "rescale_roi_boxes",
           "INFERENCE_OUTPUTS"]


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged in the forward pass; its gradient times ``scale`` in the backward pass
    (``scale == 0``: ``x.detach()``)."""
    if scale == 0:
        return x.detach()
    return _ScaleGrad.apply(x, scale)


INFERENCE_OUTPUTS = ("instances", "image_cls")


def rescale_roi_boxes(boxes: torch.Tensor, input_size: Tuple[int, int], height: int,
                      width: int) -> torch.Tensor:
    """The RoI batch's boxes (beta, 4) XYXY at the model's ``input_size`` (H, W), in the
    coordinates of the ``height`` x ``width`` output image (a new tensor)."""
    out = boxes.clone()
    out[:, 0::2] *= width / input_size[1]
    out[:, 1::2] *= height / input_size[0]
    return out


@contextlib.contextmanager
def image_cls_only(model: "OneShotRCNN") -> Iterator[None]:
    """Within the block, ``model``'s inference computes the slice class only: no segmentation
    box inference, no mask head, no mask pasting, no ``instances`` key in the outputs; the
    ``image_cls*`` outputs are unchanged (tested). ``model`` is the unwrapped ``OneShotRCNN``
    (not its DDP wrapper)."""
    before = model.inference_outputs
    model.inference_outputs = frozenset({"image_cls"})
    try:
        yield
    finally:
        model.inference_outputs = before


@META_ARCH_REGISTRY.register()
class OneShotRCNN(CTRCNN):
    """One network, two tasks (Ter-Sarkisov 2021).

    Training: a batch may mix segmentation items (dataset dicts with ``instances``) and
    classification items (with ``image_label``). Segmentation items give Mask R-CNN's five
    losses; classification items give ``loss_image_cls`` (the RPN runs on them without losses;
    the frozen classification branch selects the RoI batch; the image head classifies it).

    Before ``MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER`` (``image_loss_enabled`` False), and in
    batches without classification items, ``loss_image_cls`` is a zero-weighted sum of the image
    head's parameters: every trainable parameter then takes part in every backward pass, which
    DDP requires without ``find_unused_parameters``; the trainer drops those zero gradients
    before the optimizer step (``ImageLossStartHook``), so the head does not move.

    Classification items take the RPN's *test* top-k proposals in training too (the original
    code used the same 200 in both), so the RoI batch is selected alike in training and at
    inference.

    Inference: every output has ``instances`` (lesions; absent inside :func:`image_cls_only`)
    and ``image_cls`` (C class probabilities, softmax of the logits divided by the temperature
    ``image_cls_temperature``, 1 until calibrated; summing to 1), plus
    ``image_cls_boxes`` (beta, 4) and ``image_cls_box_scores`` (beta,) -- the RoI batch, in
    output-image coordinates -- and ``image_cls_explanation``: the head's explanation tensors
    (affinity X2 and RoI weights, or the attention weights). Both branches share the proposals'
    RoI pooling (``OneShotROIHeads.inference_both``).
    """

    @configurable
    def __init__(self, *, image_head: torch.nn.Module, image_loss_weight: float = 1.0,
                 image_loss_reduction: str = "sum", backbone_grad_scale: float = 1.0,
                 **kwargs):
        """
        Args:
            image_head: an image head from ``IMAGE_HEAD_REGISTRY``.
            image_loss_weight: w in L = L_seg + w L_img.
            image_loss_reduction: ``sum`` (papers) or ``mean`` (original code) over classes.
            backbone_grad_scale: factor on the image loss's gradient that reaches the backbone
                (through the RoI features); 1 = papers, 0 = the backbone learns from the
                segmentation loss only (the head still learns).
            kwargs: ``CTRCNN`` arguments.
        """
        super().__init__(**kwargs)
        if not isinstance(self.roi_heads, OneShotROIHeads):
            raise ConfigError("OneShotRCNN needs MODEL.ROI_HEADS.NAME: OneShotROIHeads, got "
                            f"{type(self.roi_heads).__name__}")
        if not isinstance(self.proposal_generator, RPN):
            raise ConfigError("OneShotRCNN needs Detectron2's RPN as proposal generator")
        self.image_head = image_head
        add_temperature(self)
        self.image_loss_weight = image_loss_weight
        self.image_loss_reduction = image_loss_reduction
        if backbone_grad_scale < 0:
            raise ConfigError("MODEL.ONESHOT.IMAGE_HEAD.BACKBONE_GRAD_SCALE must be >= 0, got "
                             f"{backbone_grad_scale}")
        self.backbone_grad_scale = backbone_grad_scale
        # False: classification items in training batches are ignored (no forward, no loss);
        # set by the trainer's ImageLossStartHook (MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER).
        self.image_loss_enabled = True
        # What inference computes: INFERENCE_OUTPUTS, or only "image_cls" (image_cls_only).
        self.inference_outputs = frozenset(INFERENCE_OUTPUTS)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret.update(
            image_head=build_image_head(cfg),
            image_loss_weight=cfg.MODEL.ONESHOT.IMAGE_HEAD.LOSS_WEIGHT,
            image_loss_reduction=cfg.MODEL.ONESHOT.IMAGE_HEAD.LOSS_REDUCTION,
            backbone_grad_scale=cfg.MODEL.ONESHOT.IMAGE_HEAD.BACKBONE_GRAD_SCALE,
        )
        return ret

    # ----------------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: Detectron2 dataset-mapper outputs; each has ``image`` and
                ``instances`` (segmentation item) and/or ``image_label`` (classification item).
        Returns:
            training: dict of losses; inference: list of dicts (see class docstring).
        """
        if not self.training:
            return self.inference(batched_inputs)
        seg = [x for x in batched_inputs if "instances" in x]
        cls_items = [x for x in batched_inputs if "image_label" in x]
        if len(seg) + len(cls_items) < len(batched_inputs):
            raise ValueError("every training input needs 'instances' (segmentation item) or "
                             "'image_label' (classification item)")
        losses = super().forward(seg) if seg else {}
        if cls_items and self.image_loss_enabled:
            losses.update(self.image_losses(cls_items))
        else:
            losses["loss_image_cls"] = self.unused_image_loss()
        return losses

    def unused_image_loss(self) -> torch.Tensor:
        """0 * (sum of the image head's parameters): a zero loss through which every head
        parameter gets a (zero) gradient, so DDP's reduction finds all of them."""
        return sum(p.sum() for p in self.image_head.parameters() if p.requires_grad) * 0.0

    def image_losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """``loss_image_cls`` of classification items (their RPN proposals carry no loss)."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        proposals = self.proposals_without_losses(images, features)
        scale = self.backbone_grad_scale
        if scale != 1.0:
            features = {k: scale_grad(v, scale) for k, v in features.items()}
        logits = self.classify(features, proposals)["logits"]
        labels = torch.as_tensor([int(x["image_label"]) for x in batched_inputs],
                                 device=logits.device)
        log_train_accuracy(logits, labels)
        loss = image_cls_loss(logits, labels, self.image_loss_reduction)
        return {"loss_image_cls": loss * self.image_loss_weight}

    def proposals_without_losses(self, images: ImageList,
                                 features: Dict[str, torch.Tensor]) -> List[Instances]:
        """RPN proposals of images without box annotations, in training as at inference.

        Detectron2's ``RPN.forward`` itself, run with the RPN in inference mode (no losses, so
        no ground truth needed; the *test* pre / post NMS top-k) and without autograd:
        proposals are non-differentiable in any case. Only the RPN module's own ``training``
        flag is switched, and restored.
        """
        rpn = self.proposal_generator
        was_training = rpn.training
        rpn.training = False
        try:
            with torch.no_grad():
                return rpn(images, features, None)[0]
        finally:
            rpn.training = was_training

    def classify(self, features: Dict[str, torch.Tensor],
                 proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        """RoI batch selection + image head. Returns the head's outputs (``logits`` (N, C) and
        explanation tensors) plus ``boxes`` (N, beta, 4) and ``box_scores`` (N, beta)."""
        return self._classify_rois(self.roi_heads.forward_cls_features(features, proposals))

    def _classify_rois(self, rois: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = self.image_head(rois["mask_features"])
        out.update(boxes=rois["boxes"], box_scores=rois["scores"])
        return out

    def _inference_same_size(self, batched_inputs: List[Dict], detected_instances=None,
                             do_postprocess: bool = True):
        """Lesion instances and slice-class probabilities for every image (one image size;
        ``CTRCNN.inference`` groups a batch by size)."""
        if detected_instances is not None:
            raise NotImplementedError("OneShotRCNN.inference computes its own detections")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, _ = self.proposal_generator(images, features, None)
        with_instances = "instances" in self.inference_outputs
        results, rois = self.roi_heads.inference_both(features, proposals, with_instances)
        cls_out = self._classify_rois(rois)
        probs = calibrated_softmax(cls_out.pop("logits"), self.image_cls_temperature)
        boxes, box_scores = cls_out.pop("boxes"), cls_out.pop("box_scores")
        if not with_instances:
            outputs = [{} for _ in batched_inputs]
        elif do_postprocess:
            outputs = GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        else:
            outputs = [{"instances": r} for r in results]
        for i, (out, x, size) in enumerate(zip(outputs, batched_inputs, images.image_sizes)):
            out["image_cls"] = probs[i]
            out["image_cls_boxes"] = rescale_roi_boxes(
                boxes[i], size, x.get("height", size[0]), x.get("width", size[1])) \
                if do_postprocess else boxes[i].clone()
            out["image_cls_box_scores"] = box_scores[i]
            out["image_cls_explanation"] = {k: v[i] for k, v in cls_out.items()}
        return outputs
