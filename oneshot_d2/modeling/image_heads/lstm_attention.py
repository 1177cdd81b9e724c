"""``LSTMAttentionHead``: the LSTM + attention model's image head (Ter-Sarkisov 2021)."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from .build import IMAGE_HEAD_REGISTRY, ImageHead
from .layers import mlp_head

__all__ = ["LSTMAttentionHead"]


class _AttentionLSTM(nn.Module):
    """One branch (paper eqs 1-7): LSTM over the RoI sequence, z = W h_beta, scores h_k . z,
    alpha = softmax_k, c = sum_k alpha_k h_k, output z + c."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True)
        self.query = nn.Linear(hidden, hidden)
        for name, p in self.lstm.named_parameters():
            if name.startswith("bias"):
                nn.init.constant_(p, 0.01)  # original: every bias 0.01
        nn.init.constant_(self.query.bias, 0.01)

    def forward(self, seq: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """seq (N, beta, C) -> (output (N, H), alpha (N, beta))."""
        states, _ = self.lstm(seq)  # (N, beta, H)
        z = self.query(states[:, -1])  # (N, H)
        alpha = torch.softmax(torch.einsum("nbh,nh->nb", states, z), dim=1)
        context = torch.einsum("nb,nbh->nh", alpha, states)
        return z + context, alpha


@IMAGE_HEAD_REGISTRY.register()
class LSTMAttentionHead(ImageHead):
    """Mask sieve -> vectorisation -> the beta RoIs as a sequence -> two LSTM + soft-attention
    branches ("positive" / "negative", same input) -> two FC heads -> logits = h_pos - h_neg
    (paper eqs 8-10)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        head = cfg.MODEL.ONESHOT.IMAGE_HEAD
        channels, hidden = cfg.MODEL.ROI_MASK_HEAD.CONV_DIM, head.LSTM_HIDDEN_DIM
        self.pos = _AttentionLSTM(channels, hidden)
        self.neg = _AttentionLSTM(channels, hidden)
        self.pos_head = mlp_head(hidden, head.FC_DIM, self.num_classes)
        self.neg_head = mlp_head(hidden, head.FC_DIM, self.num_classes)

    def classify(self, rois: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            rois: (N, beta, C) vectorised RoI mask features (a sequence per image).
        Returns:
            ``logits`` (N, classes), ``attention_pos`` / ``attention_neg`` (N, beta).
        """
        out_pos, alpha_pos = self.pos(rois)
        out_neg, alpha_neg = self.neg(rois)
        logits = self.pos_head(out_pos) - self.neg_head(out_neg)
        return {"logits": logits, "attention_pos": alpha_pos, "attention_neg": alpha_neg}
