#!/usr/bin/env python
"""Fit a trained slice classifier's temperature on a validation split; save it with the weights.

The command is :mod:`oneshot_d2.cli.calibrate` (console script ``oneshot-calibrate`` once
installed); this file runs it from a checkout: ``python tools/calibrate.py --help``.
"""
import sys

import oneshot_d2  # noqa: F401  isort: skip  (compatibility remedies before Detectron2)
from oneshot_d2.cli.calibrate import entry_point

if __name__ == "__main__":
    sys.exit(entry_point())
