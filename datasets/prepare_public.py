#!/usr/bin/env python
"""Convert public chest-CT datasets (MedSeg, COVID-19-CT-Seg, UCSD COVID-CT, MosMed) for oneshot_d2.

    python datasets/prepare_public.py --medseg ../shared/data/medseg98 \\
        --covid19-ct-seg ../shared/data/covid19_ct_seg --ucsd ../shared/data/ucsd_covid_ct \\
        --mosmed ../shared/data/mosmed
    python datasets/prepare_public.py --covid19-ct-seg /data/c19seg --test-volumes v07 v08

Each source folder holds a ``manifest.csv`` (layouts in datasets/README.md). Writes COCO JSON
and ``index.json`` under ``$DETECTRON2_DATASETS/public`` (source images are not copied); the
datasets ``medseg_seg[_sep]_{train,test}``, ``covid19_ct_seg_{train,test}``,
``ucsd_cls_{splits}`` and ``mosmed_cls_{splits}`` (the manifest's splits) then load (the
predefined names are registered at import and read the index when loaded). Finishes with the
dataset checker.
"""
import argparse
import logging
import sys

from oneshot_d2.cli import add_debug_argument, run_cli
from oneshot_d2.data.check import check_dataset_splits
from oneshot_d2.data.datasets.builtin import datasets_root
from oneshot_d2.data.datasets.public_ct import prepare_public_datasets, register_public_datasets

logger = logging.getLogger("prepare_public")


def main(argv=None) -> int:
    p = add_debug_argument(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--medseg", help="MedSeg-style folder (split,image,mask manifest)")
    p.add_argument("--covid19-ct-seg", help="COVID-19-CT-Seg-style folder (volume,ct,infection)")
    p.add_argument("--ucsd", help="UCSD COVID-CT-style folder (path,label,split,patient_id)")
    p.add_argument("--mosmed", help="MosMed-style folder (image,label,severity,split)")
    p.add_argument("--out", default=None, help="default $DETECTRON2_DATASETS (or datasets/)")
    p.add_argument("--test-volumes", nargs="+", default=None,
                   help="COVID-19-CT-Seg test volumes (default: last quarter, sorted)")
    p.add_argument("--min-area", type=int, default=100, help="drop lesion components <= this")
    p.add_argument("--no-check", action="store_true", help="skip the dataset checker")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    if not (args.medseg or args.covid19_ct_seg or args.ucsd or args.mosmed):
        p.error("give at least one of --medseg, --covid19-ct-seg, --ucsd, --mosmed")
    out = args.out or datasets_root()
    index = prepare_public_datasets(out, args.medseg, args.covid19_ct_seg, args.ucsd,
                                    args.test_volumes, args.min_area, mosmed=args.mosmed)
    register_public_datasets(out, replace=True)
    if args.no_check:
        return 0
    # medseg_seg_sep_* are a second view of the medseg_seg_* images: checking both would
    # report every slice as a duplicate of itself
    names = [n for n in sorted(index) if not n.startswith("medseg_seg_sep_")]
    train = [n for n in names if n.endswith("_train")]
    report = check_dataset_splits(train, [n for n in names if n not in train])
    logger.info("dataset check:\n%s", report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="prepare_public"))
