"""``setup`` and ``main`` behind ``tools/train_net.py`` (kept in the package so that ``launch``
can pickle them and other scripts can reuse them)."""
from __future__ import annotations

import logging
from typing import Iterable

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_oneshot_config
from ..data.datasets.builtin import datasets_root, register_all_builtin
from .trainer import OneShotTrainer

__all__ = ["setup", "main", "check_datasets"]

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


def setup(args) -> CfgNode:
    """Build the config from ``args`` (``--config-file``, ``opts``), set up logging and the
    output folder (Detectron2's ``default_setup``), and check the datasets."""
    cfg = get_cfg()
    add_oneshot_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
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
    """Train (optionally resuming), or evaluate a checkpoint with ``--eval-only``."""
    cfg = setup(args)
    if args.eval_only:
        model = OneShotTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        return OneShotTrainer.test(cfg, model)
    trainer = OneShotTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()
