"""Layers shared by the image heads: the mask sieve and the mask vectorisation."""
from __future__ import annotations

import torch
from detectron2.layers import get_norm
from detectron2.utils import comm
from torch import nn

from ...config import SIEVE_ORDERS

__all__ = ["MaskSieve", "MaskVectorizer", "SIEVE_ORDERS"]

# "paper": Conv s2 -> BN -> ConvT s2 -> ReLU (LSTM paper's description);
# "code": Conv s2 -> BN -> ReLU -> ConvT s2 (original code).


def _norm(norm: str, channels: int) -> nn.Module:
    """Detectron2's ``get_norm`` ("BN", "naiveSyncBN", "SyncBN", "GN", ...), bias 0.01.

    "BN" becomes "naiveSyncBN" when several processes train (identical to BN in one process):
    the statistics then cover the classification images of all replicas, as with one process
    and the same total batch, and the running statistics stay identical on every replica."""
    if norm == "BN" and comm.get_world_size() > 1:
        norm = "naiveSyncBN"
    module = get_norm(norm, channels) if norm else nn.Identity()
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0.01)
    return module


def _init_conv(module: nn.Module, bias: float = 0.01) -> None:
    """Original initialisation: Kaiming-normal (fan_out) conv weights, biases 0.01."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    nn.init.constant_(module.bias, bias)


class _SieveStage(nn.Module):
    def __init__(self, channels: int, order: str, norm: str = "BN"):
        super().__init__()
        if order not in SIEVE_ORDERS:
            raise ValueError(f"sieve order must be one of {SIEVE_ORDERS}, got {order!r}")
        hidden = channels // 2
        self.down = nn.Conv2d(channels, hidden, kernel_size=2, stride=2)
        self.norm = _norm(norm, hidden)
        self.up = nn.ConvTranspose2d(hidden, channels, kernel_size=2, stride=2)
        self.order = order
        _init_conv(self.down)
        _init_conv(self.up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.down(x))
        # in place: these maps are large (R x C x 28 x 28), a copy each costs time
        if self.order == "paper":
            return torch.relu_(self.up(x))
        return self.up(torch.relu_(x))


class MaskSieve(nn.Sequential):
    """N independent down/up stages over RoI mask features (papers' "mask sieve"):
    (R, C, H, W) -> (R, C, H, W). The original applied one shared stage N^2 times; the papers
    describe N stages, which this implements."""

    def __init__(self, channels: int, num_stages: int = 3, order: str = "paper",
                 norm: str = "BN"):
        super().__init__(*[_SieveStage(channels, order, norm) for _ in range(num_stages)])


class MaskVectorizer(nn.Module):
    """(R, C, 28, 28) -> (R, C): Conv 2x2 s2 -> ReLU -> BN, Conv 2x2 s2 -> ReLU -> BN,
    Conv 7x7 -> ReLU -> BN (the original's order: ReLU before BN)."""

    def __init__(self, channels: int, resolution: int = 28, norm: str = "BN"):
        super().__init__()
        if resolution % 4:
            raise ValueError(f"mask feature resolution must be divisible by 4, got {resolution}")
        self.convs = nn.ModuleList([
            nn.Conv2d(channels, channels, kernel_size=2, stride=2),
            nn.Conv2d(channels, channels, kernel_size=2, stride=2),
            nn.Conv2d(channels, channels, kernel_size=resolution // 4),
        ])
        self.norms = nn.ModuleList([_norm(norm, channels) for _ in range(3)])
        for conv in self.convs:
            _init_conv(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = norm(torch.relu_(conv(x)))
        return x.flatten(1)


def mlp_head(in_dim: int, hidden: int, num_classes: int) -> nn.Sequential:
    """FC -> ReLU -> FC -> ReLU -> FC (logits)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, num_classes))
