"""``OneShotRCNN``: Mask R-CNN + slice classification through the RoI batch's mask features."""
from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.structures import ImageList, Instances

from ..image_heads import build_image_head, image_cls_loss
from ..roi_heads import OneShotROIHeads

__all__ = ["OneShotRCNN"]


@META_ARCH_REGISTRY.register()
class OneShotRCNN(GeneralizedRCNN):
    """One network, two tasks (Ter-Sarkisov 2021).

    Training: a batch may mix segmentation items (dataset dicts with ``instances``) and
    classification items (with ``image_label``). Segmentation items give Mask R-CNN's five
    losses; classification items give ``loss_image_cls`` (the RPN runs on them without losses;
    the frozen classification branch selects the RoI batch; the image head classifies it).

    Inference: every output has ``instances`` (lesions) and ``image_cls`` (C class
    probabilities, softmax of the logits, summing to 1), plus ``image_cls_boxes`` (beta, 4) and
    ``image_cls_box_scores`` (beta,) -- the RoI batch, in output-image coordinates -- and
    ``image_cls_explanation``: the head's explanation tensors (affinity X2 and RoI weights, or
    the attention weights).
    """

    @configurable
    def __init__(self, *, image_head: torch.nn.Module, image_loss_weight: float = 1.0,
                 image_loss_reduction: str = "sum", per_image_standardize: bool = True, **kwargs):
        """
        Args:
            image_head: an image head from ``IMAGE_HEAD_REGISTRY``.
            image_loss_weight: w in L = L_seg + w L_img.
            image_loss_reduction: ``sum`` (papers) or ``mean`` (original code) over classes.
            per_image_standardize: z-score each image per channel with its own mean / std (the
                papers' "global mean / std" normalisation) instead of PIXEL_MEAN / PIXEL_STD.
            kwargs: ``GeneralizedRCNN`` arguments.
        """
        super().__init__(**kwargs)
        if not isinstance(self.roi_heads, OneShotROIHeads):
            raise TypeError("OneShotRCNN needs MODEL.ROI_HEADS.NAME: OneShotROIHeads, got "
                            f"{type(self.roi_heads).__name__}")
        if not isinstance(self.proposal_generator, RPN):
            raise TypeError("OneShotRCNN needs Detectron2's RPN as proposal generator")
        self.image_head = image_head
        self.image_loss_weight = image_loss_weight
        self.image_loss_reduction = image_loss_reduction
        # False: classification items in training batches are ignored (no forward, no loss);
        # set by the trainer's ImageLossStartHook (MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER).
        self.image_loss_enabled = True
        self.per_image_standardize = per_image_standardize

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret.update(
            image_head=build_image_head(cfg),
            image_loss_weight=cfg.MODEL.ONESHOT.IMAGE_HEAD.LOSS_WEIGHT,
            image_loss_reduction=cfg.MODEL.ONESHOT.IMAGE_HEAD.LOSS_REDUCTION,
            per_image_standardize=cfg.INPUT.PER_IMAGE_STANDARDIZE,
        )
        return ret

    # ----------------------------------------------------------------------------------------
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad: per-image standardisation or PIXEL_MEAN / PIXEL_STD."""
        if not self.per_image_standardize:
            return super().preprocess_image(batched_inputs)
        images = []
        for x in batched_inputs:
            img = x["image"].to(self.device).float()
            mean = img.mean(dim=(1, 2), keepdim=True)
            std = img.std(dim=(1, 2), keepdim=True).clamp(min=1e-6)
            images.append((img - mean) / std)
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

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
        if not self.image_loss_enabled:
            cls_items = []
        losses = super().forward(seg) if seg else {}
        if cls_items:
            losses.update(self.image_losses(cls_items))
        return losses

    def image_losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """``loss_image_cls`` of classification items (their RPN proposals carry no loss)."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        proposals = self.proposals_without_losses(images, features)
        logits = self.classify(features, proposals)["logits"]
        labels = torch.as_tensor([int(x["image_label"]) for x in batched_inputs],
                                 device=logits.device)
        loss = image_cls_loss(logits, labels, self.image_loss_reduction)
        return {"loss_image_cls": loss * self.image_loss_weight}

    def proposals_without_losses(self, images: ImageList,
                                 features: Dict[str, torch.Tensor]) -> List[Instances]:
        """RPN proposals for images without box annotations, also in training mode.

        Detectron2's ``RPN.forward`` asserts ground truth in training; this runs the same steps
        (anchors, head, decoding + NMS with the current mode's top-k) without the losses, under
        ``no_grad``: proposals are non-differentiable in any case.
        """
        rpn = self.proposal_generator
        if not self.training:
            return rpn(images, features, None)[0]
        with torch.no_grad():
            maps = [features[f] for f in rpn.in_features]
            anchors = rpn.anchor_generator(maps)
            logits, deltas = rpn.rpn_head(maps)
            logits = [s.permute(0, 2, 3, 1).flatten(1) for s in logits]
            box_dim = rpn.anchor_generator.box_dim
            deltas = [d.view(d.shape[0], -1, box_dim, d.shape[-2], d.shape[-1])
                      .permute(0, 3, 4, 1, 2).flatten(1, -2) for d in deltas]
            return rpn.predict_proposals(anchors, logits, deltas, images.image_sizes)

    def classify(self, features: Dict[str, torch.Tensor],
                 proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        """RoI batch selection + image head. Returns the head's outputs (``logits`` (N, C) and
        explanation tensors) plus ``boxes`` (N, beta, 4) and ``box_scores`` (N, beta)."""
        rois = self.roi_heads.forward_cls_features(features, proposals)
        out = self.image_head(rois["mask_features"])
        out.update(boxes=rois["boxes"], box_scores=rois["scores"])
        return out

    def inference(self, batched_inputs: List[Dict], detected_instances=None,
                  do_postprocess: bool = True):
        """Lesion instances and slice-class probabilities for every image."""
        if detected_instances is not None:
            raise NotImplementedError("OneShotRCNN.inference computes its own detections")
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, _ = self.proposal_generator(images, features, None)
        results, _ = self.roi_heads(images, features, proposals, None)
        cls_out = self.classify(features, proposals)
        probs = torch.softmax(cls_out.pop("logits"), dim=1)
        boxes, box_scores = cls_out.pop("boxes"), cls_out.pop("box_scores")
        if do_postprocess:
            outputs = GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
        else:
            outputs = [{"instances": r} for r in results]
        for i, (out, x, size) in enumerate(zip(outputs, batched_inputs, images.image_sizes)):
            out["image_cls"] = probs[i]
            img_boxes = boxes[i].clone()
            if do_postprocess:
                img_boxes[:, 0::2] *= x.get("width", size[1]) / size[1]
                img_boxes[:, 1::2] *= x.get("height", size[0]) / size[0]
            out["image_cls_boxes"] = img_boxes
            out["image_cls_box_scores"] = box_scores[i]
            out["image_cls_explanation"] = {k: v[i] for k, v in cls_out.items()}
        return outputs
