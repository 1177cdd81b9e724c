#!/usr/bin/env python
"""Train or evaluate a oneshot_d2 model, Detectron2-style.

    python tools/train_net.py \
        --config-file configs/quick_schedules/mask_rcnn_R_18_FPN_phantom_quick.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CFG --resume
    python tools/train_net.py --config-file CFG --num-gpus 2 SOLVER.IMS_PER_BATCH 4

Multi-GPU / multi-machine runs use Detectron2's ``launch`` (--num-gpus, --num-machines,
--machine-rank, --dist-url); without a GPU, --num-gpus N starts N CPU processes (gloo).
"""
import oneshot_d2  # noqa: F401  isort: skip  (compatibility remedies first, then datasets)
from detectron2.engine import default_argument_parser, launch

from oneshot_d2.engine import main

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
