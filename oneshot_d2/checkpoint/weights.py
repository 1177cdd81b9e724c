"""Checks of the weights a model is given: ``MODEL.WEIGHTS`` before anything is built, and the
loaded file's coverage of the model after loading (never evaluate random layers by mistake)."""
from __future__ import annotations

import os

from detectron2.config import CfgNode

from ..errors import CheckpointError, ConfigError
from ..modeling.backbone.pretrained import is_pretrained_name, pretrained_spec
from .checkpointer import AtomicCheckpointer

__all__ = ["check_weights", "check_complete_model"]


def check_weights(cfg: CfgNode, eval_only: bool = False, resume: bool = False,
                  allow_random: bool = False) -> None:
    """Check ``MODEL.WEIGHTS`` before anything is built.

    Args:
        cfg: the config.
        eval_only: evaluation only (``--eval-only``): empty weights are refused, since the
            model would be evaluated at its random initialisation, unless ``resume`` (the
            checkpoint in ``OUTPUT_DIR`` is used; :func:`oneshot_d2.engine.main`
            refuses when there is none) or ``allow_random``.
        resume: ``--resume``.
        allow_random: ``--allow-random-weights``: evaluate a random model on purpose.

    Raises:
        ConfigError: empty weights with ``eval_only`` (see above).
        CheckpointError: a local weights file that is missing, a folder or empty.
    """
    path = cfg.MODEL.WEIGHTS
    if not path:
        if eval_only and not resume and not allow_random:
            raise ConfigError(
                "MODEL.WEIGHTS: empty, so a randomly initialised model would be evaluated; "
                "give MODEL.WEIGHTS <checkpoint.pth> (train_net --eval-only: or "
                "--allow-random-weights to do it on purpose)")
        return
    if is_pretrained_name(path):  # installed trunk weights: name known and file present
        pretrained_spec(path).locate()
        return
    if "://" in path:  # detectron2:// or a URL: fetched by the checkpointer
        return
    if not os.path.isfile(path):
        what = "a folder, not a checkpoint file" if os.path.isdir(path) else "file not found"
        raise CheckpointError(f"{path}: MODEL.WEIGHTS {what}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: MODEL.WEIGHTS file is empty (0 bytes)")


def check_complete_model(checkpointer: AtomicCheckpointer, cfg: CfgNode,
                         allow_random: bool = False) -> None:
    """Refuse to evaluate a model that the loaded file only partly initialised (e.g. ImageNet
    backbone weights, or a Mask R-CNN checkpoint under a one-shot config): its other layers
    would be evaluated at their random initial values.

    Raises:
        CheckpointError: the loaded file lacked some of the model's parameters, unless
            ``allow_random`` (``--allow-random-weights``).
    """
    missing = checkpointer.missing_keys
    if not missing or allow_random or not cfg.MODEL.WEIGHTS and not checkpointer.resumed_from:
        return
    source = checkpointer.resumed_from or cfg.MODEL.WEIGHTS
    prefixes = sorted({k.split(".")[0] for k in missing})
    raise CheckpointError(
        f"{source}: lacks {len(missing)} of the model's parameters (in {', '.join(prefixes)}; "
        f"e.g. {missing[0]}): they would be evaluated at random values. Give a checkpoint of "
        "this model (train_net --eval-only: or --allow-random-weights to do it on purpose)")
