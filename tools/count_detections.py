#!/usr/bin/env python
"""Count a lesion detector's detections on a slice set, by a field of its dataset dicts.

The command is :mod:`oneshot_d2.cli.count_detections` (console script ``oneshot-count-
detections`` once installed); this file runs it from a checkout: ``python
tools/count_detections.py --help``.
"""
import sys

import oneshot_d2  # noqa: F401  isort: skip  (compatibility remedies before Detectron2)
from oneshot_d2.cli.count_detections import entry_point

if __name__ == "__main__":
    sys.exit(entry_point())
