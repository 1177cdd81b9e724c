"""The image head's ceiling on a fixed detector: what the one-shot classifier can reach when the
detector (backbone, RPN, frozen classification branch) does not move.

1. :func:`cache_roi_features`: run a trained one-shot model once over a classification dataset and
   keep every image's RoI-batch mask features (beta, C, 28, 28) -- optionally also of the
   horizontally flipped image, as training augmentation;
2. :func:`train_head_on_features`: train a fresh image head (the config's) on the cached training
   features alone, evaluating train and validation loss / accuracy / ROC-AUC after every epoch.

If the head cannot classify the validation split from these features, no joint schedule will
(the features carry too little); if it can while joint training cannot, the schedule is at fault.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from fvcore.nn.precise_bn import get_bn_modules, update_bn_stats

from ..data.mapper import CTDatasetMapper
from ..evaluation.classification_metrics import classification_metrics
from ..modeling.image_heads import build_image_head, image_cls_loss
from .utils import unwrap_model

__all__ = ["CachedRoIFeatures", "cache_roi_features", "train_head_on_features",
           "evaluate_head"]

logger = logging.getLogger(__name__)


@dataclass
class CachedRoIFeatures:
    """RoI-batch mask features of a classification dataset.

    Attributes:
        features: (M, beta, C, H, W) float16 (M = images x views).
        labels: (M,) int64 image labels.
        image_index: (M,) index of the source image (views of one image share it).
        view: (M,) 0 for the image as read, 1 for its left-right flip.
    """
    features: torch.Tensor
    labels: torch.Tensor
    image_index: torch.Tensor
    view: torch.Tensor


@torch.no_grad()
def cache_roi_features(cfg, model: torch.nn.Module, dataset_dicts: List[Dict],
                       flip: bool = False, batch_size: int = 4) -> CachedRoIFeatures:
    """RoI-batch mask features of ``dataset_dicts`` (classification items) under ``model``.

    Args:
        cfg: the model's config (test-time resize of ``INPUT``).
        model: a ``OneShotRCNN`` (in eval mode here).
        dataset_dicts: items with ``file_name`` and ``image_label``.
        flip: also cache each image flipped left-right (a second view).
        batch_size: images per forward pass (equal sizes only; see ``CTRCNN``).
    """
    model = unwrap_model(model)
    model.eval()
    mapper = CTDatasetMapper(cfg, False)
    feats, labels, index, view = [], [], [], []
    views = (False, True) if flip else (False,)
    items = []
    for i, d in enumerate(dataset_dicts):
        mapped = mapper(copy.deepcopy(d))
        for flipped in views:
            image = mapped["image"].flip(-1) if flipped else mapped["image"]
            items.append((i, int(d["image_label"]), {"image": image}, int(flipped)))
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        for size in dict.fromkeys(tuple(x[2]["image"].shape[-2:]) for x in chunk):
            group = [x for x in chunk if tuple(x[2]["image"].shape[-2:]) == size]
            images = model.preprocess_image([x[2] for x in group])
            features = model.backbone(images.tensor)
            proposals, _ = model.proposal_generator(images, features, None)
            rois = model.roi_heads.forward_cls_features(features, proposals)
            feats.append(rois["mask_features"].half().cpu())
            labels.extend(x[1] for x in group)
            index.extend(x[0] for x in group)
            view.extend(x[3] for x in group)
        if (start // batch_size) % 25 == 0:
            logger.info("cached RoI features of %d / %d views", start + len(chunk), len(items))
    return CachedRoIFeatures(torch.cat(feats), torch.as_tensor(labels),
                             torch.as_tensor(index), torch.as_tensor(view))


@torch.no_grad()
def evaluate_head(head: torch.nn.Module, data: CachedRoIFeatures, class_names: List[str],
                  reduction: str = "sum", batch_size: int = 32) -> Dict[str, float]:
    """Loss (the model's image loss), accuracy and ROC-AUC of ``head`` on cached features
    (eval mode; the first view of every image only, i.e. unflipped)."""
    head.eval()
    rows = torch.nonzero(data.view == 0).flatten()
    labels = data.labels[rows]
    logits = torch.cat([head(data.features[rows[i:i + batch_size]].float())["logits"]
                        for i in range(0, len(rows), batch_size)])
    loss = image_cls_loss(logits, labels, reduction).item()
    probs = torch.softmax(logits, 1).numpy()
    m = classification_metrics(labels.numpy(), probs, class_names)
    return {"loss": loss, "accuracy": m["accuracy"], "auc": m["macro_auc"]}


def train_head_on_features(cfg, train: CachedRoIFeatures, val: CachedRoIFeatures,
                           class_names: List[str], epochs: int = 30, lr: float = 1e-3,
                           batch_size: int = 8, weight_decay: float = 0.0, seed: int = 0,
                           precise_bn_iters: int = 20,
                           on_epoch: Optional[Callable[[List[Dict[str, float]]], None]] = None
                           ) -> List[Dict[str, float]]:
    """Train a fresh ``MODEL.ONESHOT.IMAGE_HEAD`` with Adam on cached training features.

    Batch-norm statistics are recomputed on the training features before every evaluation
    (Detectron2's precise BN), as the trainer does before its final evaluation.

    ``on_epoch(history)`` is called after every epoch (e.g. to save the curves so far).

    Returns:
        one record per epoch: ``epoch``, ``train_loss`` (mean over the epoch's steps, train
        mode), then ``train/`` and ``val/`` ``loss`` / ``accuracy`` / ``auc`` in eval mode.
    """
    torch.manual_seed(seed)
    head = build_image_head(cfg)
    reduction = cfg.MODEL.ONESHOT.IMAGE_HEAD.LOSS_REDUCTION
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history = []
    n = len(train.labels)
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.randperm(n, generator=gen)
        losses = []
        for i in range(0, n - batch_size + 1, batch_size):  # full batches: BN needs >= 2
            idx = order[i:i + batch_size]
            loss = image_cls_loss(head(train.features[idx].float())["logits"],
                                  train.labels[idx], reduction)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        _precise_bn(head, train, batch_size, precise_bn_iters, gen)
        record: Dict[str, float] = {"epoch": epoch, "train_loss": float(np.mean(losses))}
        for split, data in (("train", train), ("val", val)):
            for k, v in evaluate_head(head, data, class_names, reduction).items():
                record[f"{split}/{k}"] = v
        logger.info("epoch %d: %s", epoch, ", ".join(
            f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
        history.append(record)
        if on_epoch is not None:
            on_epoch(history)
    return history


def _precise_bn(head: torch.nn.Module, data: CachedRoIFeatures, batch_size: int,
                num_iter: int, gen: Optional[torch.Generator]) -> None:
    """Recompute the head's batch-norm statistics over ``num_iter`` random training batches."""
    if num_iter <= 0 or not get_bn_modules(head):
        return
    head.train()

    def batches():
        while True:
            idx = torch.randperm(len(data.labels), generator=gen)[:batch_size]
            yield data.features[idx].float()

    with torch.no_grad():
        update_bn_stats(head, batches(), num_iter)
