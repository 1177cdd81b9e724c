"""Check registered datasets: unreadable images, size mismatches, empty / out-of-image masks,
unknown labels, duplicates and patient leakage between training and evaluation splits.

    python tools/check_dataset.py --train phantom_seg_train phantom_cls_train \\
        --test phantom_seg_test phantom_cls_test [--json report.json] [--no-hash]

Exit status: 0 clean (warnings allowed), 1 errors found, 2 bad arguments (unknown dataset,
--json path that cannot be written, a dataset that does not load): one line
``check_dataset: error: ...`` (--debug shows the traceback).
"""
import argparse
import dataclasses
import errno
import logging
import os
from typing import List, Optional

from detectron2.data import DatasetCatalog

from ..data.check import check_dataset_splits
from ..errors import DatasetKeyError
from ..utils.file_io import atomic_write_json, make_folder
from .common import add_debug_argument, run_cli

logger = logging.getLogger("check_dataset")


def main(argv: Optional[List[str]] = None) -> int:
    """Check the named datasets; log the report; return 0 (clean) or 1 (errors found)."""
    p = add_debug_argument(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--train", nargs="*", default=[], help="training dataset names")
    p.add_argument("--test", nargs="*", default=[], help="evaluation dataset names")
    p.add_argument("--json", help="also write the findings and counts to this JSON file")
    p.add_argument("--no-hash", action="store_true", help="skip identical-content detection")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    if not (args.train or args.test):
        p.error("give the datasets to check with --train and / or --test")
    unknown = [n for n in args.train + args.test if n not in DatasetCatalog.list()]
    if unknown:
        raise DatasetKeyError(f"unknown dataset(s) {unknown}; registered: "
                       + ", ".join(sorted(DatasetCatalog.list())))
    if args.json:  # before the (long) check: a path that cannot be written fails now
        if os.path.isdir(args.json):
            raise IsADirectoryError(errno.EISDIR, "--json names a folder, not a file", args.json)
        make_folder(os.path.dirname(os.path.abspath(args.json)), "folder of --json")
    report = check_dataset_splits(args.train, args.test, hash_content=not args.no_hash)
    logger.info("\n%s", report.summary())
    if args.json:
        atomic_write_json(args.json, {"ok": report.ok, "stats": report.stats,
                                      "findings": [dataclasses.asdict(f)
                                                   for f in report.findings]})
    return 0 if report.ok else 1



def entry_point(argv: Optional[List[str]] = None) -> int:
    """The ``oneshot-check-dataset`` console script (and ``tools/check_dataset.py``):
    :func:`main` with one-line errors and exit status 2 (``--debug`` for tracebacks)."""
    return run_cli(main, argv, prog="check_dataset")
