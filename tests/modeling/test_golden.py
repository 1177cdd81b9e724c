"""Golden values of a seeded tiny one-shot model on synthetic inputs (Detectron2's
``tests/modeling/test_roi_heads.py`` style): exact losses, RoI batch and slice probabilities.
A one-line slip anywhere on the path (normalisation, proposals, RoI selection, copy, sieve,
affinity / LSTM, loss) changes them. Values were computed with this code (torch 2.14.1, CPU,
1 and 2 threads identical to 6 digits); tolerances cover numerical differences between CPUs."""
import math

import pytest
import torch
from detectron2.utils.events import EventStorage

from oneshot_d2.modeling import image_cls_loss
from tests.golden_inputs import golden_items, golden_model

SEG_LOSSES = {"loss_cls": 0.669446, "loss_box_reg": 0.001052, "loss_mask": 0.690776,
              "loss_rpn_cls": 0.693899, "loss_rpn_loc": 0.005608}
GOLDEN = {
    "AffinityHead": {
        "loss_image_cls": 0.210127,
        "probs_cls_item": [0.334984, 0.340079, 0.324938],
        "probs_seg_item": [0.335305, 0.339963, 0.324731],
    },
    "LSTMAttentionHead": {
        "loss_image_cls": 0.203617,
        "probs_cls_item": [0.299095, 0.356177, 0.344727],
        "probs_seg_item": [0.298073, 0.356477, 0.34545],
    },
}
# RoI batch of the classification item (beta 4, score order), shared by both heads.
ROI_BOXES = [[65.137, 70.222, 71.08, 81.837], [37.288, 22.647, 43.202, 33.894],
             [33.158, 22.475, 39.091, 33.77], [8.83, 14.129, 14.909, 25.136]]
ROI_SCORES = [0.513421, 0.512803, 0.512609, 0.511524]


@pytest.fixture(scope="module")
def items():
    return golden_items()


@pytest.mark.parametrize("head", list(GOLDEN))
def test_golden_training_losses(items, head):
    model = golden_model(head).train()
    torch.manual_seed(1)  # Detectron2's anchor / RoI sampling
    with EventStorage(0):
        losses = model(list(items))
    expected = dict(SEG_LOSSES, loss_image_cls=GOLDEN[head]["loss_image_cls"])
    assert set(losses) == set(expected)
    for k, v in expected.items():
        assert float(losses[k].detach()) == pytest.approx(v, rel=2e-4, abs=2e-6), k


@pytest.mark.parametrize("head", list(GOLDEN))
def test_golden_inference(items, head):
    seg, cls_item = items
    model = golden_model(head).eval()
    with torch.no_grad():
        out_cls, out_seg = model([cls_item, seg])
    assert out_cls["image_cls"].tolist() == pytest.approx(GOLDEN[head]["probs_cls_item"],
                                                          abs=2e-5)
    assert out_seg["image_cls"].tolist() == pytest.approx(GOLDEN[head]["probs_seg_item"],
                                                          abs=2e-5)
    assert torch.allclose(out_cls["image_cls_boxes"], torch.tensor(ROI_BOXES), atol=2e-2)
    assert out_cls["image_cls_box_scores"].tolist() == pytest.approx(ROI_SCORES, abs=2e-5)


def test_golden_roi_batch_classes_and_count(items):
    _, cls_item = items
    model = golden_model().eval()
    with torch.no_grad():
        images = model.preprocess_image([cls_item])
        features = model.backbone(images.tensor)
        proposals = model.proposal_generator(images, features, None)[0]
        rois = model.roi_heads.forward_cls_features(features, proposals)
    assert len(proposals[0]) == 50  # RPN.POST_NMS_TOPK_TEST of the golden config
    assert rois["num_kept"].tolist() == [4] and rois["classes"].tolist() == [[0, 0, 0, 0]]
    assert rois["mask_features"].shape == (1, 4, 256, 28, 28)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_image_loss_by_hand(reduction):
    """Per-class BCE on one-hot targets, summed (paper) or averaged (code) over classes, then
    averaged over images."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    labels = torch.tensor([0, 2])

    def bce(z, t):
        p = 1 / (1 + math.exp(-z))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    per_image = []
    for row, y in zip(logits.tolist(), labels.tolist()):
        terms = [bce(z, 1.0 if c == y else 0.0) for c, z in enumerate(row)]
        per_image.append(sum(terms) if reduction == "sum" else sum(terms) / len(terms))
    expected = sum(per_image) / len(per_image)
    assert float(image_cls_loss(logits, labels, reduction)) == pytest.approx(expected, rel=1e-6)
