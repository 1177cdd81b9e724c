#!/usr/bin/env python
"""Convert a CNCB-NCOV copy (lesion masks + COVIDx-CT classification splits) for oneshot_d2.

    python datasets/prepare_cncb.py                       # $DETECTRON2_DATASETS/cncb
    python datasets/prepare_cncb.py --root /data/cncb --modes merge --min-area 100

Expects the layout of datasets/README.md ("cncb"); writes
``annotations/seg_{train,test}_{merge,separate}.json`` and checks the classification split files.
After it, the predefined datasets ``cncb_seg_*``, ``cncb_seg_sep_*`` and ``cncb_cls_*`` load
(they are registered at import and read their files when loaded).
"""
import argparse
import logging
import os
import sys

from oneshot_d2.cli import add_debug_argument, run_cli
from oneshot_d2.data.datasets import load_covidx_split
from oneshot_d2.data.datasets.builtin import CLS_SPLITS, datasets_root, prepare_cncb_layout

logger = logging.getLogger("prepare_cncb")


def main(argv=None) -> int:
    p = add_debug_argument(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--root", default=None, help="CNCB folder (default $DETECTRON2_DATASETS/cncb)")
    p.add_argument("--modes", nargs="+", default=["merge", "separate"],
                   choices=["merge", "separate"])
    p.add_argument("--min-area", type=int, default=100, help="drop lesion components <= this")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    root = args.root or os.path.join(datasets_root(), "cncb")
    for path in prepare_cncb_layout(root, tuple(args.modes), args.min_area):
        logger.info("wrote %s", path)
    cls = os.path.join(root, "classification")
    for split in CLS_SPLITS:
        split_file = os.path.join(cls, f"{split}_COVIDx_CT.txt")
        if os.path.isfile(split_file):
            n = len(load_covidx_split(split_file, os.path.join(cls, "images")))
            logger.info("%s: %d images, all present", split_file, n)
        else:
            logger.warning("%s not found: cncb_cls_%s will not be registered", split_file,
                           split)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="prepare_cncb"))
