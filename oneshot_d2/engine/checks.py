"""Checks of a configuration before training (settings that would train, but silently crippled)
and of evaluation results against ``TEST.EXPECTED_RESULTS``."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Dict, List, Optional

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..config import ConfigError
from ..data.build import check_image_class_count
from ..data.datasets.covid_ct import CT_CLS_EVALUATOR
from ..modeling.backbone.pretrained import is_pretrained_name, pretrained_spec

__all__ = ["check_training_config", "frozen_random_layers", "verify_results",
           "check_solver_values", "check_dataset_classes"]

logger = logging.getLogger(__name__)

_BN_NORMS = ("BN", "SyncBN", "naiveSyncBN", "nnSyncBN")


# The norm key of the trunk that pretrained://... weights of each trunk class fill.
_TRUNK_NORM_KEYS = {"EfficientNetLite": "MODEL.EFFICIENTNET.NORM", "ResNet": "MODEL.RESNETS.NORM"}
# Config sections of one backbone family, used only when MODEL.BACKBONE.NAME names it.
_BACKBONE_SECTIONS = {"RESNETS": "resnet", "EFFICIENTNET": "efficientnet", "FPN": "fpn"}
_DETECTOR_SECTIONS = ("RPN", "ROI_HEADS", "ROI_BOX_HEAD", "ROI_MASK_HEAD", "ROI_KEYPOINT_HEAD")


def _unused_sections(cfg: CfgNode) -> List[str]:
    """``MODEL`` sections the config's model does not build: another backbone family's (when the
    backbone is one of Detectron2's / oneshot_d2's families), and the detector's sections under
    the plain ``CTImageClassifier``."""
    name = cfg.MODEL.BACKBONE.NAME.lower()
    unused = []
    if any(family in name for family in ("resnet", "efficientnet")):
        unused += [s for s, family in _BACKBONE_SECTIONS.items() if family not in name]
    if cfg.MODEL.META_ARCHITECTURE == "CTImageClassifier":
        unused += list(_DETECTOR_SECTIONS)
    return unused


def frozen_random_layers(cfg: CfgNode) -> List[str]:
    """Config settings that keep layers frozen at their random initial values.

    Training from scratch (``MODEL.WEIGHTS`` empty):

    * ``MODEL.BACKBONE.FREEZE_AT > 0`` freezes the trunk's stem (1) and its first stages (> 1);
    * a ``FrozenBN`` norm anywhere under ``MODEL`` is an identity with default buffers (sections
      of modules the config does not build are skipped: another backbone family's, the
      detector's under ``CTImageClassifier``).

    With ``pretrained://`` trunk weights only the trunk is loaded, so a ``FrozenBN`` norm outside
    it (e.g. ``MODEL.FPN.NORM``) is still random. Any other weights file is taken as a complete
    model: empty list.
    """
    weights = cfg.MODEL.WEIGHTS
    if weights and not is_pretrained_name(weights):
        return []
    found = []
    if not weights and cfg.MODEL.BACKBONE.FREEZE_AT > 0:
        found.append(f"MODEL.BACKBONE.FREEZE_AT={cfg.MODEL.BACKBONE.FREEZE_AT} (frozen stem"
                     f"{'' if cfg.MODEL.BACKBONE.FREEZE_AT == 1 else ' and first stages'})")
    loaded = _TRUNK_NORM_KEYS.get(pretrained_spec(weights).trunk.__name__) if weights else None
    unused = {f"MODEL.{s}." for s in _unused_sections(cfg)}

    def visit(node: CfgNode, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, CfgNode):
                if f"{prefix}{key}." not in unused:
                    visit(value, f"{prefix}{key}.")
            elif key == "NORM" and value == "FrozenBN" and f"{prefix}{key}" != loaded:
                found.append(f"{prefix}{key}=FrozenBN (an identity without pretrained weights"
                             f"{'; ' + weights + ' fills ' + loaded + ' only' if loaded else ''})")

    visit(cfg.MODEL, "MODEL.")
    return found


def check_training_config(cfg: CfgNode) -> None:
    """Refuse training settings that run but train a crippled model.

    Raises:
        ValueError: frozen random layers (see :func:`frozen_random_layers`), a batch-norm
            image head with fewer than 2 classification images per step, or class counts that
            do not fit the registered datasets (:func:`check_dataset_classes`).
    """
    frozen = frozen_random_layers(cfg)
    if frozen:
        start = (f"with trunk weights only (MODEL.WEIGHTS {cfg.MODEL.WEIGHTS})"
                 if cfg.MODEL.WEIGHTS else "from scratch (MODEL.WEIGHTS is empty)")
        raise ConfigError(
            f"training {start}, layers would stay frozen at random values: {'; '.join(frozen)}. "
            "Set MODEL.BACKBONE.FREEZE_AT 0 and a trainable norm (BN / SyncBN / GN) there, or "
            "set MODEL.WEIGHTS to weights that hold them")
    warn_pixel_norm(cfg)
    one = cfg.MODEL.get("ONESHOT")
    if (one is not None and cfg.DATASETS.TRAIN_CLS and one.IMAGE_HEAD.NORM in _BN_NORMS
            and cfg.SOLVER.CLS_IMS_PER_BATCH < 2):
        raise ConfigError(
            f"MODEL.ONESHOT.IMAGE_HEAD.NORM={one.IMAGE_HEAD.NORM!r} with "
            f"SOLVER.CLS_IMS_PER_BATCH={cfg.SOLVER.CLS_IMS_PER_BATCH}: batch norm over one "
            "slice's RoIs removes the slice-level mean of every channel in training but not at "
            "inference. Use MODEL.ONESHOT.IMAGE_HEAD.NORM GN (batch-independent) or >= 2 "
            "classification images per step")
    check_dataset_classes(cfg)


def warn_pixel_norm(cfg: CfgNode) -> None:
    """Warn when ``pretrained://`` trunk weights meet another input normalisation than the one
    they were trained with (``MODEL.PIXEL_NORM`` / ``PIXEL_MEAN`` / ``PIXEL_STD``): the model
    trains, but starts from shifted features."""
    if not is_pretrained_name(cfg.MODEL.WEIGHTS):
        return
    expected = pretrained_spec(cfg.MODEL.WEIGHTS).pixel_norm
    differ = [k for k, v in expected.items()
              if (list(cfg.MODEL[k]) if isinstance(v, list) else cfg.MODEL[k]) != v]
    if differ:
        logger.warning("%s was trained on inputs normalised with %s; the config has %s",
                       cfg.MODEL.WEIGHTS, ", ".join(f"MODEL.{k} {v}" for k, v in expected.items()),
                       ", ".join(f"MODEL.{k} {cfg.MODEL[k]}" for k in differ))


def check_solver_values(cfg: CfgNode, world_size: int = 1) -> None:
    """Refuse training values that fail deep inside Detectron2 or train nothing.

    Raises:
        ConfigError: a batch size (``SOLVER.IMS_PER_BATCH``, and ``SOLVER.CLS_IMS_PER_BATCH``
            with ``DATASETS.TRAIN_CLS``) that is not positive or not divisible by the number of
            processes, or a ``SOLVER.MAX_ITER`` that is not positive.
    """
    batches = [("SOLVER.IMS_PER_BATCH", cfg.SOLVER.IMS_PER_BATCH)]
    if cfg.DATASETS.get("TRAIN_CLS"):
        batches.append(("SOLVER.CLS_IMS_PER_BATCH", cfg.SOLVER.CLS_IMS_PER_BATCH))
    for key, value in batches:
        if value <= 0:
            raise ConfigError(f"{key}: must be a positive number of images per iteration, "
                              f"got {value}")
        if value % world_size:
            raise ConfigError(f"{key}: {value} images cannot be split evenly over "
                              f"{world_size} processes")
    if cfg.SOLVER.MAX_ITER <= 0:
        raise ConfigError(f"SOLVER.MAX_ITER: must be a positive number of iterations, "
                          f"got {cfg.SOLVER.MAX_ITER}")


def _lesion_classes(name: str) -> Optional[List[str]]:
    """A segmentation dataset's category names: its metadata's ``thing_classes``, else the
    ``categories`` of its COCO JSON (``json_file`` metadata); ``None`` when unknown."""
    meta = MetadataCatalog.get(name)
    classes = meta.get("thing_classes", None)
    if classes is not None:
        return list(classes)
    json_file = meta.get("json_file", None)
    if not json_file or not os.path.isfile(json_file):
        return None
    try:
        with open(json_file, encoding="utf-8") as f:
            categories = json.load(f)["categories"]
        return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the loader reports the malformed file


def check_dataset_classes(cfg: CfgNode) -> None:
    """Check the model's class counts against the registered datasets of ``DATASETS.TRAIN``,
    ``DATASETS.TRAIN_CLS`` and ``DATASETS.TEST`` (from their metadata; unregistered names are
    left to :func:`~oneshot_d2.engine.defaults.check_datasets`).

    Raises:
        ConfigError: ``MODEL.ROI_HEADS.NUM_CLASSES`` smaller than a segmentation dataset's
            categories (the extra categories would land on the background index).
        ValueError: a classification dataset's class count differs from
            ``MODEL.ONESHOT.NUM_IMAGE_CLASSES``.
    """
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.get("TRAIN_CLS", ())) + list(
        cfg.DATASETS.TEST)
    registered = set(DatasetCatalog.list())
    num_things = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    for name in dict.fromkeys(n for n in names if n in registered):
        meta = MetadataCatalog.get(name)
        if meta.get("evaluator_type", None) == CT_CLS_EVALUATOR:
            if cfg.MODEL.get("ONESHOT") is not None:
                check_image_class_count(name, cfg.MODEL.ONESHOT.NUM_IMAGE_CLASSES)
            continue
        classes = _lesion_classes(name)
        if classes is not None and len(classes) > num_things:
            raise ConfigError(
                f"MODEL.ROI_HEADS.NUM_CLASSES: {num_things}, but dataset {name!r} has "
                f"{len(classes)} categories {classes} (category ids >= {num_things} would "
                f"train as background): set it to {len(classes)}")



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
