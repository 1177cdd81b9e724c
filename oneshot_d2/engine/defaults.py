"""``setup`` and ``main`` behind ``tools/train_net.py`` (kept in the package so that ``launch``
can pickle them and other scripts can reuse them), and ``check_args``, the checks
``tools/train_net.py`` runs before launching (config, datasets, class counts, weights, output
folder), so that a mistake is one clear error before any process starts or file is written."""
from __future__ import annotations

import logging
import os
from typing import Iterable

import torch
from detectron2.config import CfgNode
from detectron2.config.defaults import _C as D2_DEFAULTS
from detectron2.data import DatasetCatalog
from detectron2.engine import default_setup
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import AtomicCheckpointer, check_complete_model, check_weights
from ..compat import filter_known_warnings
from ..config import ConfigError, load_config, resolve_device
from ..data.build import check_image_classes
from ..data.datasets.builtin import builtin_not_prepared, datasets_root, register_all_builtin
from ..errors import DatasetKeyError
from ..utils.file_io import make_folder
from .checks import (
    check_dataset_classes,
    check_solver_values,
    check_training_config,
    verify_results,
)
from .trainer import OneShotTrainer

__all__ = ["setup", "main", "check_datasets", "default_output_dir", "build_config",
           "check_config", "check_args", "load_model_for_tool"]

logger = logging.getLogger(__name__)


def check_datasets(names: Iterable[str]) -> None:
    """Raise a clear error for dataset names that are not registered, and for predefined ones
    whose files are not prepared (:func:`builtin_not_prepared`)."""
    names = list(dict.fromkeys(names))
    missing = [n for n in names if n not in DatasetCatalog.list()]
    if missing:
        raise DatasetKeyError(
            f"dataset(s) {missing} are not registered. The predefined datasets are listed in "
            "datasets/README.md (their files under $DETECTRON2_DATASETS, now "
            f"{datasets_root()!r}); register your own with oneshot_d2.data.datasets."
            "register_ct_seg / register_ct_cls.")
    unprepared = [(n, r) for n in names if (r := builtin_not_prepared(n)) is not None]
    if unprepared:
        raise DatasetKeyError("; ".join(f"dataset {n!r} is not prepared: {r}"
                                        for n, r in unprepared))


def default_output_dir(config_file: str) -> str:
    """``output/<config file name without .yaml>``: the output folder of a config that sets
    no ``OUTPUT_DIR`` (configs leave it unset, as in Detic's ``train_net.py``)."""
    return os.path.join("output", os.path.splitext(os.path.basename(config_file))[0])


def build_config(args) -> CfgNode:
    """The config of ``args`` (``--config-file``, ``opts``), not frozen: ``OUTPUT_DIR`` defaults
    to :func:`default_output_dir`, a CUDA device falls back to the CPU when there is no GPU.

    Raises:
        ConfigError: no / missing / malformed config file, unknown key, wrong value type
            (:func:`oneshot_d2.config.load_config`).
    """
    if not args.config_file:
        raise ConfigError("--config-file: missing (e.g. --config-file "
                          "configs/quick_schedules/mask_rcnn_R_18_FPN_phantom_quick.yaml)")
    cfg = load_config(args.config_file, args.opts)
    if cfg.OUTPUT_DIR == D2_DEFAULTS.OUTPUT_DIR:  # not set by the YAML nor the command line
        cfg.OUTPUT_DIR = default_output_dir(args.config_file)
    resolve_device(cfg)  # a CUDA device without a GPU: the CPU, with a warning
    return cfg


def _allow_random_weights(args) -> bool:
    return bool(getattr(args, "allow_random_weights", False))


def check_config(cfg: CfgNode, args, world_size: int = 1) -> None:
    """The checks that need no model and write nothing: datasets registered, class counts,
    (training) batch sizes, iterations and frozen random layers, and ``MODEL.WEIGHTS``
    (:mod:`oneshot_d2.engine.checks`)."""
    register_all_builtin()
    check_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.get("TRAIN_CLS", ()))
                   + list(cfg.DATASETS.TEST))
    if args.eval_only:
        check_dataset_classes(cfg)
    else:
        check_solver_values(cfg, world_size)
        check_training_config(cfg)  # includes check_dataset_classes
    check_weights(cfg, eval_only=args.eval_only, resume=args.resume,
                  allow_random=_allow_random_weights(args))


def check_args(args) -> CfgNode:
    """What ``tools/train_net.py`` checks before ``launch``: :func:`build_config`,
    :func:`check_config` for ``--num-gpus x --num-machines`` processes, and that ``OUTPUT_DIR``
    can be created (it is created). Returns the (unfrozen) config."""
    cfg = build_config(args)
    check_config(cfg, args, world_size=args.num_gpus * args.num_machines)
    make_folder(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    return cfg


def setup(args) -> CfgNode:
    """Build the config from ``args`` (:func:`build_config`), check it (:func:`check_config`),
    set up logging and the output folder (Detectron2's ``default_setup``). Returns it frozen."""
    cfg = build_config(args)
    check_config(cfg, args, world_size=comm.get_world_size())
    cfg.freeze()
    make_folder(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="oneshot_d2")
    return cfg



def load_model_for_tool(cfg: CfgNode, datasets: Iterable[str], folder: str,
                        log_file: str | None = None, threads: int = 0,
                        check_classes: bool = True, complete: bool = True) -> torch.nn.Module:
    """The common start of the analysis tools (probe, ceiling, calibration, detection counts):
    register the builtin datasets and check ``datasets`` (and their image classes against
    ``MODEL.ONESHOT.NUM_IMAGE_CLASSES``), check ``MODEL.WEIGHTS`` (random weights give
    meaningless numbers), create ``folder`` (for the tool's outputs), set up logging (to
    ``log_file`` too when given) and the torch threads, build the model and load its weights.

    Args:
        complete: refuse weights that leave some of the model's parameters at their
            initial values (False for a probe of a pretrained trunk, whose head is not used).

    Returns:
        The model, in training mode, with ``MODEL.WEIGHTS`` loaded.
    """
    datasets = list(datasets)
    register_all_builtin()
    check_datasets(datasets)
    if check_classes:
        for name in datasets:
            check_image_classes(name, cfg.MODEL.ONESHOT.NUM_IMAGE_CLASSES)
    check_weights(cfg, eval_only=True)
    make_folder(folder, "output folder")
    setup_logger(output=log_file, name="oneshot_d2")
    if threads:
        torch.set_num_threads(threads)
    model = build_model(cfg)
    checkpointer = AtomicCheckpointer(model)
    checkpointer.load(cfg.MODEL.WEIGHTS)  # CheckpointError names a bad file
    if complete:
        check_complete_model(checkpointer, cfg)
    return model


def main(args):
    """Train (optionally resuming), or evaluate a checkpoint with ``--eval-only``; then check
    ``TEST.EXPECTED_RESULTS`` when set."""
    filter_known_warnings()  # again here: launch's worker processes start afresh
    cfg = setup(args)
    if args.eval_only:
        model = OneShotTrainer.build_model(cfg)
        # a missing / corrupt MODEL.WEIGHTS raises CheckpointError naming the file; with
        # --resume, a corrupt checkpoint in OUTPUT_DIR raises too (no fallback: never evaluate
        # another model than the named one); nothing is saved, so nothing is cleaned up
        checkpointer = AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR, save_to_disk=False)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume, fallback=False)
        if checkpointer.resumed_from is None:  # no checkpoint in OUTPUT_DIR: MODEL.WEIGHTS only
            check_weights(cfg, eval_only=True, allow_random=_allow_random_weights(args))
        check_complete_model(checkpointer, cfg, allow_random=_allow_random_weights(args))
        results = OneShotTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = OneShotTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()  # checks TEST.EXPECTED_RESULTS too
