#!/usr/bin/env python
"""Ceiling of the image head on a frozen detector (oneshot_d2.engine.head_ceiling).

The command is :mod:`oneshot_d2.cli.image_head_ceiling` (console script ``oneshot-image-head-
ceiling`` once installed); this file runs it from a checkout: ``python
tools/image_head_ceiling.py --help``.
"""
import sys

import oneshot_d2  # noqa: F401  isort: skip  (compatibility remedies before Detectron2)
from oneshot_d2.cli.image_head_ceiling import entry_point

if __name__ == "__main__":
    sys.exit(entry_point())
