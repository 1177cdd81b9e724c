#!/usr/bin/env python
"""Export a trained model to TorchScript and / or ONNX, checked against PyTorch.

The command is :mod:`oneshot_d2.cli.export_model` (console script ``oneshot-export-model`` once
installed); this file runs it from a checkout: ``python tools/export_model.py --help``.
"""
import sys

import oneshot_d2  # noqa: F401  isort: skip  (compatibility remedies before Detectron2)
from oneshot_d2.cli.export_model import entry_point

if __name__ == "__main__":
    sys.exit(entry_point())
