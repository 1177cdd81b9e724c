#!/usr/bin/env python
"""Check registered datasets: unreadable images, size mismatches, empty / out-of-image masks,
unknown labels, duplicates and patient leakage between training and evaluation splits.

The command is :mod:`oneshot_d2.cli.check_dataset` (console script ``oneshot-check-dataset``
once installed); this file runs it from a checkout: ``python tools/check_dataset.py --help``.
"""
import sys

import oneshot_d2  # noqa: F401  isort: skip  (compatibility remedies before Detectron2)
from oneshot_d2.cli.check_dataset import entry_point

if __name__ == "__main__":
    sys.exit(entry_point())
