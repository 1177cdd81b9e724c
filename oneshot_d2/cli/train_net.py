"""Train or evaluate a oneshot_d2 model, Detectron2-style.

    python tools/train_net.py \
        --config-file configs/quick_schedules/mask_rcnn_R_18_FPN_phantom_quick.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume
    python tools/train_net.py --config-file CFG --num-gpus 2 SOLVER.IMS_PER_BATCH 4

Multi-GPU / multi-machine runs use Detectron2's ``launch`` (--num-gpus, --num-machines,
--machine-rank, --dist-url); without a GPU, --num-gpus N starts N CPU processes (gloo).

The config, datasets, class counts, weights and output folder are checked before ``launch``:
a mistake is one line ``train_net: error: <file or key>: <problem>`` and exit status 2
(``--debug`` shows the traceback). ``--eval-only`` refuses an empty ``MODEL.WEIGHTS`` (a random
model) unless ``--allow-random-weights``.
"""
from typing import List, Optional

from detectron2.engine import default_argument_parser, launch

from ..engine import main as train_main
from ..engine.defaults import check_args
from .common import add_debug_argument, run_cli, run_quietly


def parse_args(argv: Optional[List[str]] = None):
    """Detectron2's ``default_argument_parser`` plus ``--debug`` and ``--allow-random-weights``."""
    parser = add_debug_argument(default_argument_parser())
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="with --eval-only and no MODEL.WEIGHTS: evaluate the randomly "
                             "initialised model on purpose")
    args = parser.parse_args(argv)
    if "--debug" in args.opts:  # given after the config options (KEY VALUE ...)
        args.opts = [o for o in args.opts if o != "--debug"]
        args.debug = True
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Check the arguments and the config, then train or evaluate (``launch``)."""
    args = parse_args(argv)
    check_args(args)
    launch(
        run_quietly,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(train_main, args),
    )
    return 0



def entry_point(argv: Optional[List[str]] = None) -> int:
    """The ``oneshot-train`` console script (and ``tools/train_net.py``): :func:`main` with
    one-line errors and exit status 2 (``--debug`` for tracebacks)."""
    return run_cli(main, argv, prog="train_net")
