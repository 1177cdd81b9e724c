#!/usr/bin/env python
"""Linear probe of a frozen backbone on slice classification (oneshot_d2.engine.linear_probe).

The command is :mod:`oneshot_d2.cli.linear_probe` (console script ``oneshot-linear-probe`` once
installed); this file runs it from a checkout: ``python tools/linear_probe.py --help``.
"""
import sys

import oneshot_d2  # noqa: F401  isort: skip  (compatibility remedies before Detectron2)
from oneshot_d2.cli.linear_probe import entry_point

if __name__ == "__main__":
    sys.exit(entry_point())
