"""Optimizers of oneshot_d2: SGD / Adam / AdamW (``SOLVER.OPTIMIZER``), and ``SGDAdam`` for
the image head trained with Adam beside an SGD-trained detector.

Why a hybrid: trained from scratch on the CPU schedules, Mask R-CNN learns lesions fast with
SGD at Detectron2's rates, while the image heads (affinity matrix, LSTM, batch-normalised
sieve) are unstable under SGD and learn reliably with Adam (measured; docs/results.md). The
papers use one Adam for everything (lr 1e-5), which remains the default of the paper configs.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from ..config import OPTIMIZERS
from ..errors import ConfigError
from .utils import unwrap_model

__all__ = ["SGDAdam", "build_optimizer", "OPTIMIZERS"]



class SGDAdam(torch.optim.Optimizer):
    """SGD with momentum on parameter groups with ``adam=False``, Adam (L2 weight decay, as
    ``torch.optim.Adam``) on groups with ``adam=True``.

    Updates are those of ``torch.optim.SGD`` (dampening 0) and ``torch.optim.Adam``
    (``amsgrad=False``), group by group; one optimizer object keeps Detectron2's LR scheduler,
    checkpointing and gradient clipping working unchanged.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        betas=tuple(betas), eps=eps, adam=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                if group["adam"]:
                    self._adam(p, grad, group)
                else:
                    self._sgd(p, grad, group)
        return loss

    def _sgd(self, p: torch.Tensor, grad: torch.Tensor, group: Dict[str, Any]) -> None:
        momentum = group["momentum"]
        if momentum:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad)
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        p.add_(grad, alpha=-group["lr"])

    def _adam(self, p: torch.Tensor, grad: torch.Tensor, group: Dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        step = state["step"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1 = 1 - beta1 ** step
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(group["eps"])
        p.addcdiv_(exp_avg, denom, value=-group["lr"] / bias1)


def _image_head_params(model: torch.nn.Module):
    model = unwrap_model(model)
    head = getattr(model, "image_head", None)
    return {id(p) for p in head.parameters()} if head is not None else set()


def _split_image_head(groups: List[Dict[str, Any]], head_ids: set, lr_factor: float,
                      head_extra: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Split parameter groups so the image head's parameters form their own groups, with
    ``lr * lr_factor`` and ``head_extra`` keys (the rest get the negated flags)."""
    out = []
    for group in groups:
        in_head = [p for p in group["params"] if id(p) in head_ids]
        rest = [p for p in group["params"] if id(p) not in head_ids]
        if rest:
            out.append({**group, "params": rest})
        if in_head:
            out.append({**group, "params": in_head, "lr": group["lr"] * lr_factor,
                        **head_extra})
    return out


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``SOLVER.OPTIMIZER`` (SGD, Adam, AdamW; papers: Adam lr 1e-5, weight
    decay 1e-3) over the trainable parameters (frozen branches are left out).

    ``SOLVER.IMAGE_HEAD_LR_FACTOR`` scales the image head's learning rate;
    ``SOLVER.IMAGE_HEAD_OPTIMIZER: "Adam"`` with ``SOLVER.OPTIMIZER: "SGD"`` trains the image
    head with Adam and the rest with SGD (:class:`SGDAdam`).
    """
    name, head_name = cfg.SOLVER.OPTIMIZER, cfg.SOLVER.IMAGE_HEAD_OPTIMIZER or cfg.SOLVER.OPTIMIZER
    if name not in OPTIMIZERS:
        raise ConfigError(f"SOLVER.OPTIMIZER must be one of {OPTIMIZERS}, got {name!r}")
    if head_name != name and (name, head_name) != ("SGD", "Adam"):
        raise ConfigError("SOLVER.IMAGE_HEAD_OPTIMIZER may differ from SOLVER.OPTIMIZER only as "
                         f"Adam beside SGD, got {head_name!r} beside {name!r}")
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    head_ids = _image_head_params(model)
    hybrid = head_name != name
    if head_ids and (hybrid or cfg.SOLVER.IMAGE_HEAD_LR_FACTOR != 1.0):
        params = _split_image_head(params, head_ids, cfg.SOLVER.IMAGE_HEAD_LR_FACTOR,
                                   {"adam": True} if hybrid else {})
    betas = tuple(cfg.SOLVER.ADAM_BETAS)
    if hybrid:
        opt_cls, kwargs = SGDAdam, {"momentum": cfg.SOLVER.MOMENTUM,
                                    "nesterov": cfg.SOLVER.NESTEROV, "betas": betas}
    elif name == "SGD":
        opt_cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM,
                                            "nesterov": cfg.SOLVER.NESTEROV}
    else:
        opt_cls = torch.optim.Adam if name == "Adam" else torch.optim.AdamW
        kwargs = {"betas": betas}
    return maybe_add_gradient_clipping(cfg, opt_cls)(
        params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **kwargs)
