"""Seeded synthetic inputs and the tiny model of the golden tests
(tests/modeling/test_golden.py)."""
import torch
from detectron2.structures import BitMasks, Boxes, Instances

from tests.common import AFFINITY_QUICK, make_cfg, seeded_model

SIZE = 96


def golden_cfg(head: str = "AffinityHead"):
    """The shipped quick config with a small head (A = 16, beta 4)."""
    return make_cfg(AFFINITY_QUICK, "MODEL.ONESHOT.IMAGE_HEAD.NAME", head,
                    "MODEL.ONESHOT.IMAGE_HEAD.NUM_AFFINITIES", "16",
                    "MODEL.ONESHOT.ROI_BATCH_SIZE", "4", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
                    "MODEL.RPN.PRE_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
                    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "100", "INPUT.MIN_SIZE_TEST", str(SIZE),
                    "INPUT.MAX_SIZE_TEST", str(SIZE))


def golden_model(head: str = "AffinityHead"):
    model = seeded_model(golden_cfg(head), seed=0)
    model.roi_heads.copy_seg_to_cls()
    return model


def golden_items():
    """One segmentation item (2 lesions) and one classification item (label 2), 96 x 96."""
    g = torch.Generator().manual_seed(123)
    images = [torch.rand(3, SIZE, SIZE, generator=g) * 255 for _ in range(2)]
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[0, 10:40, 12:30] = True
    masks[1, 50:80, 55:90] = True
    for m in masks:  # lesions brighter than the background
        images[0][:, m] += 60
    inst = Instances((SIZE, SIZE))
    inst.gt_boxes = Boxes(torch.tensor([[12.0, 10, 30, 40], [55, 50, 90, 80]]))
    inst.gt_classes = torch.tensor([0, 0])
    inst.gt_masks = BitMasks(masks)
    seg = {"image": images[0], "instances": inst, "height": SIZE, "width": SIZE}
    cls_item = {"image": images[1], "image_label": 2, "height": SIZE, "width": SIZE}
    return seg, cls_item
