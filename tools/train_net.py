#!/usr/bin/env python
"""Train or evaluate a oneshot_d2 model, Detectron2-style.

The command is :mod:`oneshot_d2.cli.train_net` (console script ``oneshot-train`` once
installed); this file runs it from a checkout: ``python tools/train_net.py --help``.
"""
import sys

import oneshot_d2  # noqa: F401  isort: skip  (compatibility remedies before Detectron2)
from oneshot_d2.cli.train_net import entry_point

if __name__ == "__main__":
    sys.exit(entry_point())
