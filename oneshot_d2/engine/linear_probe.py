"""Linear probe: the floor any fine-tuned slice classifier must clear.

A frozen backbone (``CTImageClassifier``'s, e.g. ImageNet EfficientNet-Lite0 through
``MODEL.WEIGHTS: pretrained://efficientnet-lite0``) turns every slice into its pooled features
(``MODEL.IMAGE_CLASSIFIER.IN_FEATURES``, averaged over the slice as the classifier does), with
the evaluation's preprocessing (test-time resize, ``MODEL.PIXEL_NORM``); a class-balanced
logistic regression (scikit-learn, L2, ``C``) is fitted on the training split and scored on the
validation split. The fit is deterministic (L-BFGS): the same features give the same numbers.
"""
from __future__ import annotations

import copy
import logging
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..data.mapper import CTDatasetMapper
from ..evaluation.classification_evaluation import POSITIVE_CLASS
from ..evaluation.classification_metrics import (
    choose_threshold,
    classification_metrics,
    thresholded_metrics,
)
from .utils import unwrap_model

__all__ = ["extract_pooled_features", "fit_linear_probe"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def extract_pooled_features(cfg, model: torch.nn.Module, dataset_dicts: List[Dict],
                            batch_size: int = 8) -> Tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features of classification items.

    Args:
        cfg: the model's config (``INPUT`` test-time resize and format).
        model: a ``CTImageClassifier`` (put in eval mode here).
        dataset_dicts: items with ``file_name`` and ``image_label``.
        batch_size: images per forward pass.
    Returns:
        features (M, D) float32 and labels (M,) int64, in item order.
    """
    model = unwrap_model(model)
    model.eval()
    mapper = CTDatasetMapper(cfg, False)
    feats: List[np.ndarray] = []
    for start in range(0, len(dataset_dicts), batch_size):
        chunk = [mapper(copy.deepcopy(d)) for d in dataset_dicts[start:start + batch_size]]
        for i in range(len(chunk)):  # one at a time: no padding of mixed sizes into the means
            feats.append(model.pooled_features([chunk[i]]).float().cpu().numpy()[0])
    labels = np.array([int(d["image_label"]) for d in dataset_dicts], dtype=np.int64)
    return np.stack(feats), labels


def fit_linear_probe(train: Tuple[np.ndarray, np.ndarray], val: Tuple[np.ndarray, np.ndarray],
                     class_names: Sequence[str], c: float = 0.1) -> Dict:
    """Fit ``LogisticRegression(C=c, class_weight="balanced")`` on ``train``, score ``val``.

    Returns:
        ``{"train": metrics, "val": metrics}`` (:func:`classification_metrics`, percent); for
        two classes each also holds ``chosen_threshold`` (chosen on the training split) and the
        validation split's ``thresholded/...`` metrics at it, as the evaluator reports them.
    """
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=10000)
    clf.fit(train[0], train[1])
    out = {}
    probs = {}
    for split, (x, y) in (("train", train), ("val", val)):
        probs[split] = clf.predict_proba(x)
        report = classification_metrics(y, probs[split], list(class_names))
        out[split] = {k: v for k, v in report.items() if isinstance(v, (float, int))}
    if len(class_names) == 2:
        threshold = choose_threshold(train[1] == POSITIVE_CLASS, probs["train"][:, 1])
        at = thresholded_metrics(val[1] == POSITIVE_CLASS, probs["val"][:, 1], threshold)
        out["val"]["chosen_threshold"] = threshold
        out["val"].update({f"thresholded/{k}": v for k, v in at.items()})
    return out
