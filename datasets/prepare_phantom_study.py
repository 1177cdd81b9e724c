#!/usr/bin/env python
"""Write one synthetic phantom patient as a CT study: a DICOM series and a NIfTI volume (the
input of ``make predict-demo``), with its ground-truth label volume.

    python datasets/prepare_phantom_study.py            # -> $DETECTRON2_DATASETS/phantom_study
    python datasets/prepare_phantom_study.py --out DIR --slices 40 --size 512 --label covid

Layout::

    <out>/dicom/IM0000.dcm ...        # axial CT series, HU = stored * slope + intercept
    <out>/nifti/phantom_ct.nii.gz     # the same volume, RAS+, int16 HU
    <out>/nifti/phantom_truth.nii.gz  # ground truth: 1 lung, 2 GGO, 3 consolidation
    <out>/.oneshot_d2_phantom_study.json

Deterministic for a given seed. The study is written in a temporary sibling folder and swapped
in; an existing folder is only replaced with --overwrite and only when this tool wrote it.
"""
import argparse
import json
import logging
import os
import shutil
import sys
import tempfile

from oneshot_d2.cli import add_debug_argument, run_cli
from oneshot_d2.data.datasets.builtin import datasets_root
from oneshot_d2.data.phantom import CLASS_NAMES, min_slice_size
from oneshot_d2.data.phantom_study import (
    render_phantom_study,
    write_dicom_series,
    write_nifti_volume,
)
from oneshot_d2.errors import DatasetError, UsageError
from oneshot_d2.utils.file_io import replace_folder
from oneshot_d2.utils.file_lock import file_lock
from oneshot_d2.utils.temp_names import clean_orphans, tmp_prefix

logger = logging.getLogger("prepare_phantom_study")
MARKER = ".oneshot_d2_phantom_study.json"
LABELS = {"normal": 0, "cp": 1, "covid": 2}


def main(argv=None) -> int:
    p = add_debug_argument(argparse.ArgumentParser(description=__doc__.splitlines()[1]))
    p.add_argument("--out", default=None, help="output folder "
                   "(default $DETECTRON2_DATASETS/phantom_study)")
    p.add_argument("--label", choices=sorted(LABELS), default="covid", help="patient class")
    p.add_argument("--slices", type=int, default=24, help="number of axial slices")
    p.add_argument("--size", type=int, default=256, help="slice size in pixels")
    p.add_argument("--slice-spacing", type=float, default=5.0, help="mm between slices")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a study this tool wrote")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    if args.slices < 1:
        raise UsageError(f"--slices must be >= 1, got {args.slices}")
    if args.size < min_slice_size():
        raise UsageError(f"--size must be >= {min_slice_size()} (room for lesions), got "
                         f"{args.size}")
    if args.slice_spacing <= 0:
        raise UsageError(f"--slice-spacing must be > 0, got {args.slice_spacing}")
    out = os.path.abspath(args.out or os.path.join(datasets_root(), "phantom_study"))
    parent, base = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    with file_lock(out):
        clean_orphans(parent, [base])
        if os.path.lexists(out):
            if not os.path.isfile(os.path.join(out, MARKER)):
                raise DatasetError(f"{out}: exists and was not written by prepare_phantom_study "
                                   f"(no {MARKER}); choose another --out")
            if not args.overwrite:
                logger.info("%s already holds a phantom study (--overwrite replaces it)", out)
                return 0
        study = render_phantom_study(LABELS[args.label], args.slices, args.size, args.seed,
                                     args.slice_spacing)
        tmp = tempfile.mkdtemp(prefix=tmp_prefix(base), dir=parent)
        try:
            write_dicom_series(os.path.join(tmp, "dicom"), study.hu, study.spacing,
                               patient_id=f"PHANTOM{args.seed}")
            os.makedirs(os.path.join(tmp, "nifti"))
            write_nifti_volume(os.path.join(tmp, "nifti", "phantom_ct.nii.gz"), study.hu,
                               study.spacing)
            write_nifti_volume(os.path.join(tmp, "nifti", "phantom_truth.nii.gz"), study.mask,
                               study.spacing, dtype="uint8")
            with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
                json.dump({"tool": "oneshot_d2 datasets/prepare_phantom_study.py",
                           "label": CLASS_NAMES[study.label], "slices": args.slices,
                           "size": args.size, "spacing_mm": list(study.spacing),
                           "seed": args.seed}, f, indent=1)
            replace_folder(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("phantom study (%s, %d slices of %d px) written to %s", CLASS_NAMES[study.label],
                args.slices, args.size, out)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="prepare_phantom_study"))
