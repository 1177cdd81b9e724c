#!/usr/bin/env python
"""Generate the synthetic chest-CT phantom dataset and its COCO annotations.

    python datasets/prepare_phantom.py                      # -> $DETECTRON2_DATASETS/phantom
    python datasets/prepare_phantom.py --size 512 --seg-train 400 --overwrite
    python datasets/prepare_phantom.py --montage docs/phantom_montage.png

Writes the CNCB-NCOV segmentation layout, COVIDx-CT classification split files and
``annotations/seg_{train,test}_{merge,separate}.json`` (see datasets/README.md). Deterministic for
a given seed; an existing complete dataset is kept unless --overwrite. The set is built in a
temporary sibling folder and swapped in; --overwrite only replaces a folder this tool wrote (it
holds the marker file .oneshot_d2_phantom.json), never anything else.
"""
import argparse
import logging
import os
import sys

from oneshot_d2.cli import add_debug_argument, run_cli
from oneshot_d2.data.datasets.builtin import datasets_root
from oneshot_d2.data.phantom import min_slice_size
from oneshot_d2.data.phantom_dataset import PhantomSpec, prepare_phantom_dataset
from oneshot_d2.data.phantom_montage import write_montage
from oneshot_d2.errors import UsageError

logger = logging.getLogger("prepare_phantom")


def main(argv=None) -> int:
    defaults = PhantomSpec()
    p = add_debug_argument(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--root", default=None,
                   help="output folder (default $DETECTRON2_DATASETS/phantom)")
    p.add_argument("--size", type=int, default=defaults.size, help="slice size in pixels")
    for key in ("seg_train", "seg_test", "cls_train", "cls_val", "cls_test", "slices_per_patient"):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=getattr(defaults, key))
    p.add_argument("--cls-shares", type=float, nargs=3, default=defaults.cls_class_shares,
                   metavar=("NORMAL", "CP", "COVID"), help="classification class shares")
    p.add_argument("--seg-shares", type=float, nargs=3, default=defaults.seg_class_shares,
                   metavar=("NORMAL", "CP", "COVID"), help="segmentation-set class shares")
    p.add_argument("--min-area", type=int, default=100, help="drop lesion components <= this")
    p.add_argument("--save-hu", action="store_true", help="also write HU PNGs and NIfTI volumes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--montage", default=None, help="only write a montage PNG to this path")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    minimum = min_slice_size(args.min_area)
    if args.size < minimum:  # the set would hold no lesion instance
        raise UsageError(f"--size {args.size}: too small for lesions of more than --min-area "
                         f"{args.min_area} px; the minimum is {minimum}")
    counts = {k: getattr(args, k) for k in ("seg_train", "seg_test", "cls_train", "cls_val",
                                             "cls_test")}
    negative = [f"--{k.replace('_', '-')} {v}" for k, v in counts.items() if v < 0]
    if negative:
        raise UsageError(f"{', '.join(negative)}: slice counts must be >= 0")
    if args.slices_per_patient < 1:
        raise UsageError(f"--slices-per-patient {args.slices_per_patient}: must be >= 1")
    for flag, shares in (("--cls-shares", args.cls_shares), ("--seg-shares", args.seg_shares)):
        if min(shares) < 0 or sum(shares) <= 0:
            raise UsageError(f"{flag} {' '.join(map(str, shares))}: shares must be >= 0 with a "
                             "positive sum")
    if args.montage:
        write_montage(args.montage, size=args.size, seed=args.seed)
        logger.info("montage written to %s", args.montage)
        return 0
    root = args.root or os.path.join(datasets_root(), "phantom")
    spec = PhantomSpec(size=args.size, seg_train=args.seg_train, seg_test=args.seg_test,
                       cls_train=args.cls_train, cls_val=args.cls_val, cls_test=args.cls_test,
                       seg_class_shares=tuple(args.seg_shares),
                       cls_class_shares=tuple(args.cls_shares),
                       slices_per_patient=args.slices_per_patient, save_hu=args.save_hu,
                       seed=args.seed)
    # under a lock; refuses to replace what it did not write (one error line, exit 2); atomic
    written, counts = prepare_phantom_dataset(root, spec, overwrite=args.overwrite,
                                              min_area=args.min_area)
    if not written:
        logger.info("%s already holds a phantom dataset (use --overwrite to regenerate)", root)
    logger.info("slices: %s", counts)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="prepare_phantom"))
