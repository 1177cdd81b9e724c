"""Export a trained model's inference path to TorchScript and / or ONNX.

    python tools/export_model.py --config-file CFG --format onnx --format torchscript \\
        --output exported/ MODEL.WEIGHTS output/model_final.pth

Writes into ``--output``: ``model.onnx`` / ``model.ts`` (one image at the model's input size in;
lesion boxes, scores, classes, 28 x 28 mask probabilities, slice-class probabilities, the RoI
batch and the head's explanation out; docs/deploy.md), ``config.yaml`` (the config, for
``tools/predict.py --backend onnxruntime|torchscript``) and ``export.json`` (what was exported
and each file's largest differences from PyTorch on two phantom slices of different sizes).
Every exported file is checked that way before this command succeeds; ONNX files also with
``onnx.checker``. Existing files are replaced only with ``--overwrite``; each is written under a
temporary name and renamed.
"""
import argparse
import logging
from typing import Dict, List, Optional

from ..config import load_config, resolve_device
from ..export import FORMATS
from ..inference import OneShotPredictor
from ..inference.exporting import export_files
from .common import add_debug_argument, run_cli


def main(argv: Optional[List[str]] = None) -> Dict:
    """Parse the command line, export, check; returns ``export.json``'s content."""
    p = add_debug_argument(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    p.add_argument("--format", action="append", choices=FORMATS, metavar="FORMAT",
                   help="a format to write, onnx or torchscript (repeatable; default: both)")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace files written before")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config options, e.g. MODEL.WEIGHTS output/model_final.pth")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    cfg = load_config(args.config_file, [o for o in args.opts if o != "--debug"])
    resolve_device(cfg, "")  # a CUDA config exports on the CPU when there is no GPU
    predictor = OneShotPredictor(cfg, batch_size=1)
    return export_files(predictor, list(dict.fromkeys(args.format or FORMATS)), args.output,
                        args.overwrite, config_file=args.config_file)


def entry_point(argv: Optional[List[str]] = None) -> int:
    """The ``oneshot-export-model`` console script (and ``tools/export_model.py``): :func:`main`
    with one-line errors and exit status 2 (``--debug`` for tracebacks)."""
    return run_cli(main, argv, prog="export_model")
