"""Checks of a configuration before training (settings that would train, but silently crippled)
and of evaluation results against ``TEST.EXPECTED_RESULTS``."""
from __future__ import annotations

import logging
import math
from typing import Dict, List

from detectron2.config import CfgNode

__all__ = ["check_training_config", "frozen_random_layers", "verify_results"]

logger = logging.getLogger(__name__)

_BN_NORMS = ("BN", "SyncBN", "naiveSyncBN", "nnSyncBN")


def frozen_random_layers(cfg: CfgNode) -> List[str]:
    """Config settings that keep layers frozen at their random initial values when training
    starts from scratch (``MODEL.WEIGHTS`` empty); empty when weights are loaded.

    * ``MODEL.BACKBONE.FREEZE_AT > 0`` freezes the ResNet stem (1) and res2..res(N) (N > 1);
    * a ``FrozenBN`` norm anywhere under ``MODEL`` is an identity with default buffers.
    """
    if cfg.MODEL.WEIGHTS:
        return []
    found = []
    if cfg.MODEL.BACKBONE.FREEZE_AT > 0:
        found.append(f"MODEL.BACKBONE.FREEZE_AT={cfg.MODEL.BACKBONE.FREEZE_AT} (frozen stem"
                     f"{'' if cfg.MODEL.BACKBONE.FREEZE_AT == 1 else ' and res2+'})")

    def visit(node: CfgNode, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, CfgNode):
                visit(value, f"{prefix}{key}.")
            elif key == "NORM" and value == "FrozenBN":
                found.append(f"{prefix}{key}=FrozenBN (an identity without pretrained weights)")

    visit(cfg.MODEL, "MODEL.")
    return found


def check_training_config(cfg: CfgNode) -> None:
    """Refuse training settings that run but train a crippled model.

    Raises:
        ValueError: frozen random layers (see :func:`frozen_random_layers`), or a batch-norm
            image head with fewer than 2 classification images per step.
    """
    frozen = frozen_random_layers(cfg)
    if frozen:
        raise ValueError(
            "training from scratch (MODEL.WEIGHTS is empty) would keep layers frozen at random "
            f"values: {'; '.join(frozen)}. Set MODEL.BACKBONE.FREEZE_AT 0 and a trainable norm "
            "(MODEL.RESNETS.NORM BN / SyncBN / GN), or set MODEL.WEIGHTS to pretrained weights")
    one = cfg.MODEL.get("ONESHOT")
    if (one is not None and cfg.DATASETS.TRAIN_CLS and one.IMAGE_HEAD.NORM in _BN_NORMS
            and cfg.SOLVER.CLS_IMS_PER_BATCH < 2):
        raise ValueError(
            f"MODEL.ONESHOT.IMAGE_HEAD.NORM={one.IMAGE_HEAD.NORM!r} with "
            f"SOLVER.CLS_IMS_PER_BATCH={cfg.SOLVER.CLS_IMS_PER_BATCH}: batch norm over one "
            "slice's RoIs removes the slice-level mean of every channel in training but not at "
            "inference. Use MODEL.ONESHOT.IMAGE_HEAD.NORM GN (batch-independent) or >= 2 "
            "classification images per step")


def verify_results(cfg: CfgNode, results: Dict) -> None:
    """Check evaluation results against ``TEST.EXPECTED_RESULTS`` (Detectron2's accuracy-test
    convention, ``[[task, metric, expected, tolerance], ...]``); ``task`` may be
    ``"<dataset>/<task>"`` when several datasets are evaluated.

    Raises:
        RuntimeError: naming every metric that is missing or off by more than its tolerance.
    """
    failures = []
    for task, metric, expected, tolerance in cfg.TEST.EXPECTED_RESULTS:
        node = results
        for key in task.split("/") if task not in results else [task]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        actual = node.get(metric) if isinstance(node, dict) else None
        if actual is None or not math.isfinite(actual) or abs(actual - expected) > tolerance:
            failures.append(f"{task}/{metric} = {actual} (expected {expected} +- {tolerance})")
    if failures:
        raise RuntimeError("results differ from TEST.EXPECTED_RESULTS: " + "; ".join(failures))
    if cfg.TEST.EXPECTED_RESULTS:
        logger.info("Results match TEST.EXPECTED_RESULTS (%d metrics)",
                    len(cfg.TEST.EXPECTED_RESULTS))
