#!/usr/bin/env python
"""Run a trained oneshot_d2 model on CT studies: DICOM series, NIfTI volumes, image files.

The command is :mod:`oneshot_d2.cli.predict` (console script ``oneshot-predict`` once
installed); this file runs it from a checkout: ``python tools/predict.py --help``.
"""
import sys

import oneshot_d2  # noqa: F401  isort: skip  (compatibility remedies before Detectron2)
from oneshot_d2.cli.predict import entry_point

if __name__ == "__main__":
    sys.exit(entry_point())
