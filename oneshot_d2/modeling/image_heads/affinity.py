"""``AffinityHead``: the affinity model's image head (Ter-Sarkisov 2021, "affinity" paper)."""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from .build import IMAGE_HEAD_REGISTRY, ImageHead
from .layers import mlp_head

__all__ = ["AffinityHead"]


@IMAGE_HEAD_REGISTRY.register()
class AffinityHead(ImageHead):
    """Mask sieve -> vectorisation X1 (beta x C) -> affinity matrix W1 (beta x A):
    X2 = W1^T X1 (A x C) -> affinity vector w2 (A): x3 = X2^T w2 (C) -> FC-FC-logits.

    Note (the released code): x3 = X1^T (W1 w2), i.e. the layer learns one weight per RoI;
    ``roi_weights`` = W1 w2 (beta,) is exposed for explanation beside X2.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        head = cfg.MODEL.ONESHOT.IMAGE_HEAD
        channels, beta = cfg.MODEL.ROI_MASK_HEAD.CONV_DIM, self.roi_batch_size
        a = head.NUM_AFFINITIES
        # Original init: standard normal (std 1, unscaled); the std is configurable.
        self.affinity_matrix = nn.Parameter(torch.randn(beta, a) * head.AFFINITY_INIT_STD)
        self.affinity_vector = nn.Parameter(torch.randn(a) * head.AFFINITY_INIT_STD)
        self.head = mlp_head(channels, head.FC_DIM, self.num_classes)

    def classify(self, rois: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            rois: (N, beta, C) vectorised RoI mask features X1.
        Returns:
            ``logits`` (N, classes), ``affinity`` X2 (N, A, C), ``roi_weights`` (N, beta).
        """
        x2 = torch.einsum("ba,nbc->nac", self.affinity_matrix, rois)
        x3 = torch.einsum("nac,a->nc", x2, self.affinity_vector)
        roi_weights = (self.affinity_matrix @ self.affinity_vector).expand(rois.shape[0], -1)
        return {"logits": self.head(x3), "affinity": x2, "roi_weights": roi_weights}
