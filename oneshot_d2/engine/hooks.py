"""``CopyClsBranchesHook``: when to copy the segmentation branch into the classification branch.

Criterion: the segmentation loss summed over its five terms (RPN objectness + box, RoI class +
box, mask), smoothed by a running median over ``window`` iterations. Modes:

* ``best`` (default, papers: "copied if the segmentation loss improves"): copy when the criterion
  is below the best value so far;
* ``previous`` (LSTM code): copy when it is below the previous iteration's value;
* ``period``: copy every ``period`` iterations.

The decision is taken on rank 0 (the only process whose event storage holds the losses) and
broadcast, so replicas never drift. An initial copy runs before training (it also fills the
branch when the weights come from a plain Mask R-CNN checkpoint); on resume the restored branch
is kept. The hook's state (best / previous value, copy count) is saved in checkpoints. Copies run
after the optimizer step (the LSTM code copied before it); they are logged and counted in the
event storage as ``oneshot/cls_branch_copies``.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from typing import Deque, Dict

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..config import COPY_MODES
from ..errors import ConfigError
from .utils import unwrap_model

__all__ = ["CopyClsBranchesHook", "SEG_LOSS_KEYS", "COPY_MODES"]

logger = logging.getLogger(__name__)

SEG_LOSS_KEYS = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask")


class CopyClsBranchesHook(HookBase):
    """Copies ``roi_heads`` segmentation branches into the frozen classification branches."""

    def __init__(self, mode: str = "best", period: int = 100, window: int = 20):
        if mode not in COPY_MODES:
            raise ConfigError(f"MODEL.ONESHOT.COPY.MODE must be one of {COPY_MODES}, got {mode!r}")
        if period < 1 or window < 1:
            raise ConfigError("MODEL.ONESHOT.COPY.PERIOD and SMOOTHING_WINDOW must be >= 1")
        self.mode, self.period, self.window = mode, period, window
        self._recent: Deque[float] = deque(maxlen=window)
        self.best = math.inf
        self.previous = math.inf
        self.num_copies = 0
        self.last_copy_iter = -1

    # ----------------------------------------------------------------------------------------
    def copy(self) -> None:
        unwrap_model(self.trainer.model).roi_heads.copy_seg_to_cls()
        self.num_copies += 1
        self.last_copy_iter = self.trainer.iter

    def before_train(self):
        if self.trainer.iter == 0 and self.trainer.start_iter == 0:
            self.copy()
            logger.info("Initial copy of the segmentation branches into the classification "
                        "branches")

    def _criterion(self):
        latest = self.trainer.storage.latest()  # name -> (value, iteration)
        if any(k not in latest or latest[k][1] != self.trainer.iter for k in SEG_LOSS_KEYS):
            return None  # no segmentation item in this iteration
        total = sum(latest[k][0] for k in SEG_LOSS_KEYS)
        self._recent.append(float(total))
        return sorted(self._recent)[len(self._recent) // 2]

    def should_copy(self, value) -> bool:
        """Decide (on rank 0) from the smoothed criterion ``value`` (None: no seg loss)."""
        if self.mode == "period":
            return (self.trainer.iter + 1) % self.period == 0
        if value is None or not math.isfinite(value):
            return False
        if self.mode == "best":
            decision = value < self.best
            self.best = min(self.best, value)
        else:
            decision = value < self.previous
            self.previous = value
        return decision

    def after_step(self):
        decision = False
        if comm.is_main_process():
            value = self._criterion()
            decision = self.should_copy(value)
        if comm.get_world_size() > 1:
            decision = comm.all_gather(decision)[0]
        if decision:
            self.copy()
        if comm.is_main_process():
            self.trainer.storage.put_scalar("oneshot/cls_branch_copies", self.num_copies,
                                            smoothing_hint=False)

    def after_train(self):
        logger.info("Classification branches copied %d times; last at iteration %d",
                    self.num_copies, self.last_copy_iter)

    # ----------------------------------------------------------------------------------------
    def state_dict(self) -> Dict:
        return {"best": float(self.best), "previous": float(self.previous),
                "num_copies": int(self.num_copies), "last_copy_iter": int(self.last_copy_iter),
                "recent": [float(v) for v in self._recent]}

    def load_state_dict(self, state: Dict) -> None:
        self.best = float(state["best"])
        self.previous = float(state["previous"])
        self.num_copies = int(state["num_copies"])
        self.last_copy_iter = int(state["last_copy_iter"])
        self._recent = deque(state.get("recent", []), maxlen=self.window)


class ImageLossStartHook(HookBase):
    """Enables the image loss from iteration ``start_iter`` on
    (``MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER``). Before it, ``OneShotRCNN`` skips the
    classification items and returns a zero-weighted ``loss_image_cls`` through which the image
    head gets zero gradients (so DDP finds every parameter); this hook drops those gradients
    before each optimizer step, so the head is not touched (no weight decay, no Adam state)
    until the start. Decided from the trainer's iteration before every step, so resuming needs
    no extra state."""

    def __init__(self, start_iter: int):
        self.start_iter = int(start_iter)
        self._handle = None

    def _model(self):
        return unwrap_model(self.trainer.model)

    def _drop_head_grads(self, optimizer, args, kwargs) -> None:
        if not self._model().image_loss_enabled:
            for p in self._model().image_head.parameters():
                p.grad = None

    def before_train(self):
        self._handle = self.trainer.optimizer.register_step_pre_hook(self._drop_head_grads)

    def before_step(self):
        enabled = self.trainer.iter >= self.start_iter
        model = self._model()
        if model.image_loss_enabled != enabled:
            model.image_loss_enabled = enabled
            logger.info("image loss %s at iteration %d", "enabled" if enabled else "disabled",
                        self.trainer.iter)

    def after_train(self):
        self._model().image_loss_enabled = True
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
