"""``setup`` and ``main`` behind ``tools/train_net.py`` (kept in the package so that ``launch``
can pickle them and other scripts can reuse them)."""
from __future__ import annotations

import logging
import os
from typing import Iterable

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.config.defaults import _C as D2_DEFAULTS
from detectron2.data import DatasetCatalog
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_oneshot_config
from ..data.datasets.builtin import datasets_root, register_all_builtin
from .checks import verify_results
from .trainer import OneShotTrainer

__all__ = ["setup", "main", "check_datasets", "default_output_dir"]

logger = logging.getLogger(__name__)


def check_datasets(names: Iterable[str]) -> None:
    """Raise a clear error for dataset names that are not registered."""
    missing = [n for n in names if n not in DatasetCatalog.list()]
    if missing:
        raise KeyError(
            f"dataset(s) {missing} are not registered. Predefined datasets register when their "
            f"files exist under $DETECTRON2_DATASETS (now {datasets_root()!r}): run "
            "`python datasets/prepare_phantom.py` for the phantom data or see datasets/README.md; "
            "register your own with oneshot_d2.data.datasets.register_ct_seg / register_ct_cls.")


def default_output_dir(config_file: str) -> str:
    """``output/<config file name without .yaml>``: the output folder of a config that sets
    no ``OUTPUT_DIR`` (configs leave it unset, as in Detic's ``train_net.py``)."""
    return os.path.join("output", os.path.splitext(os.path.basename(config_file))[0])


def setup(args) -> CfgNode:
    """Build the config from ``args`` (``--config-file``, ``opts``; ``OUTPUT_DIR`` defaults to
    :func:`default_output_dir`), set up logging and the output folder (Detectron2's
    ``default_setup``), and check the datasets."""
    cfg = get_cfg()
    add_oneshot_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.OUTPUT_DIR == D2_DEFAULTS.OUTPUT_DIR:  # not set by the YAML nor the command line
        cfg.OUTPUT_DIR = default_output_dir(args.config_file)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("oneshot_d2").warning("CUDA is not available: running on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="oneshot_d2")
    register_all_builtin()
    check_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    return cfg


def main(args):
    """Train (optionally resuming), or evaluate a checkpoint with ``--eval-only``; then check
    ``TEST.EXPECTED_RESULTS`` when set."""
    cfg = setup(args)
    if args.eval_only:
        model = OneShotTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        results = OneShotTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = OneShotTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()  # checks TEST.EXPECTED_RESULTS too
