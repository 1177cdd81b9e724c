"""RoI batch selection, image heads (shapes of every stage, beta 8 and 16), image loss."""
import pytest
import torch
from detectron2.config import get_cfg

from oneshot_d2 import add_oneshot_config
from oneshot_d2.modeling import build_image_head, image_cls_loss, select_roi_batch
from oneshot_d2.modeling.image_heads.layers import MaskSieve, MaskVectorizer


def _boxes(rows):
    """(R, 1, 4) boxes and (R, 1) scores of one foreground class from (x1, y1, x2, y2, s)."""
    t = torch.tensor(rows, dtype=torch.float32)
    return t[:, None, :4], t[:, 4:5]


def test_padding_when_none_survive():
    boxes, scores = _boxes([[5, 5, 5, 9, 0.9]])  # zero width: dropped by the area filter
    b = select_roi_batch(boxes, scores, (100, 120), beta=8)
    assert b.num_kept == 0 and b.boxes.shape == (8, 4)
    assert torch.equal(b.boxes, torch.tensor([[0.0, 0.0, 120.0, 100.0]]).expand(8, 4))
    assert torch.all(b.scores == 0)


def test_padding_when_one_survives():
    boxes, scores = _boxes([[10, 10, 30, 30, 0.8], [11, 11, 31, 31, 0.5]])  # IoU > 0.25
    b = select_roi_batch(boxes, scores, (100, 100), beta=8)
    assert b.num_kept == 1
    assert torch.equal(b.boxes, torch.tensor([[10.0, 10, 30, 30]]).expand(8, 4))


def test_cyclic_padding_and_score_order():
    boxes, scores = _boxes([[0, 0, 10, 10, 0.2], [50, 50, 60, 60, 0.9], [20, 20, 30, 30, 0.5]])
    b = select_roi_batch(boxes, scores, (100, 100), beta=8)
    assert b.num_kept == 3
    assert b.scores.tolist() == pytest.approx([0.9, 0.5, 0.2] * 2 + [0.9, 0.5])


def test_more_than_beta_keeps_top_scores():
    rows = [[i * 11, 0, i * 11 + 10, 10, 0.1 + 0.05 * i] for i in range(12)]
    b = select_roi_batch(*_boxes(rows), (100, 200), beta=8)
    assert b.num_kept == 8
    assert b.scores.tolist() == pytest.approx([0.1 + 0.05 * i for i in range(11, 3, -1)])


def test_whole_image_roi_comes_first_and_the_rest_is_the_usual_selection():
    rows = [[50, 50, 60, 60, 0.9], [0, 5, 10, 15, 0.5], [20, 0, 30, 10, 0.7]]
    for order in (False, True):
        b = select_roi_batch(*_boxes(rows), (100, 120), beta=4, order_by_distance=order,
                             whole_image=True)
        rest = select_roi_batch(*_boxes(rows), (100, 120), beta=3, order_by_distance=order)
        assert b.boxes[0].tolist() == [0.0, 0.0, 120.0, 100.0] and float(b.scores[0]) == 0.0
        assert torch.equal(b.boxes[1:], rest.boxes) and torch.equal(b.scores[1:], rest.scores)
        assert b.num_kept == rest.num_kept == 3
    with pytest.raises(ValueError, match="beta must be >= 2"):
        select_roi_batch(*_boxes(rows), (100, 120), beta=1, whole_image=True)


def test_class_wise_nms():
    boxes = torch.tensor([[[10.0, 10, 30, 30], [10.0, 10, 30, 30]]])  # same box, two classes
    b = select_roi_batch(boxes, torch.tensor([[0.6, 0.3]]), (64, 64), beta=4)
    assert b.num_kept == 2 and b.classes[:2].tolist() == [0, 1]


def test_distance_ordering():
    boxes, scores = _boxes([[50, 50, 60, 60, 0.9], [0, 5, 10, 15, 0.5], [20, 0, 30, 10, 0.7]])
    b = select_roi_batch(boxes, scores, (100, 100), beta=3, order_by_distance=True)
    assert b.boxes[:, :2].tolist() == [[0, 5], [20, 0], [50, 50]]


def test_distance_ordering_uses_the_top_left_corner_euclidean_distance():
    """Boxes whose orders disagree: by top-left Euclidean distance C (27.9), B (28), A (30);
    by score A, C, B; by x1 B, C, A; by y1 A, C, B; by bottom-right or centre C, A, B; by
    x1 + y1 B, A, C; descending C's reverse. Only the paper's rule gives C, B, A."""
    a, b_, c = [30, 0, 35, 5, 0.9], [0, 28, 90, 90, 0.5], [10, 26, 13, 29, 0.7]
    boxes, scores = _boxes([a, b_, c])
    b = select_roi_batch(boxes, scores, (100, 100), beta=3, order_by_distance=True)
    assert b.boxes.tolist() == [c[:4], b_[:4], a[:4]]
    assert b.scores.tolist() == pytest.approx([0.7, 0.5, 0.9])


def test_original_padding_runs_are_contiguous():
    torch.manual_seed(0)
    boxes, scores = _boxes([[0, 0, 10, 10, 0.9], [50, 50, 60, 60, 0.5]])
    b = select_roi_batch(boxes, scores, (100, 100), beta=8, padding="original")
    s = b.scores.tolist()
    assert s == sorted(s, reverse=True)
    assert {round(v, 3) for v in s} == {0.9, 0.5}


def _cfg(head, beta, **extra):
    cfg = get_cfg()
    add_oneshot_config(cfg)
    cfg.MODEL.ONESHOT.IMAGE_HEAD.NAME = head
    cfg.MODEL.ONESHOT.ROI_BATCH_SIZE = beta
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 32
    cfg.MODEL.ONESHOT.IMAGE_HEAD.NUM_AFFINITIES = extra.get("a", 16)
    cfg.MODEL.ONESHOT.IMAGE_HEAD.LSTM_HIDDEN_DIM = 24
    return cfg


def test_sieve_and_vectorizer_shapes():
    x = torch.randn(5, 32, 28, 28)
    for order in ("paper", "code"):
        assert MaskSieve(32, 3, order)(x).shape == (5, 32, 28, 28)
    assert MaskVectorizer(32, 28)(x).shape == (5, 32)
    assert len(MaskSieve(32, 3)) == 3 and MaskSieve(32, 3)[0] is not MaskSieve(32, 3)[1]


@pytest.mark.parametrize("beta", [8, 16])
def test_affinity_head_shapes(beta):
    torch.manual_seed(0)
    head = build_image_head(_cfg("AffinityHead", beta, a=16)).eval()
    out = head(torch.randn(3, beta, 32, 28, 28))
    assert out["logits"].shape == (3, 3)
    assert out["affinity"].shape == (3, 16, 32)  # X2: A x C per image
    assert out["roi_weights"].shape == (3, beta)
    assert head.affinity_matrix.shape == (beta, 16) and head.affinity_vector.shape == (16,)


def test_affinity_equals_roi_weighting():
    """x3 = X2^T w2 = X1^T (W1 w2): the affinity layer is a learned weight per RoI."""
    torch.manual_seed(0)
    head = build_image_head(_cfg("AffinityHead", 8)).eval()
    rois = torch.randn(2, 8, 32)
    out = head.classify(rois)
    x3 = torch.einsum("nb,nbc->nc", out["roi_weights"], rois)
    assert torch.allclose(head.head(x3), out["logits"], atol=1e-4)


@pytest.mark.parametrize("beta", [8, 16])
def test_lstm_attention_head_shapes(beta):
    torch.manual_seed(0)
    head = build_image_head(_cfg("LSTMAttentionHead", beta)).eval()
    out = head(torch.randn(2, beta, 32, 28, 28))
    assert out["logits"].shape == (2, 3)
    for k in ("attention_pos", "attention_neg"):
        assert out[k].shape == (2, beta)
        assert torch.allclose(out[k].sum(1), torch.ones(2))


def test_lstm_heads_batch_independent():
    torch.manual_seed(0)
    head = build_image_head(_cfg("LSTMAttentionHead", 8)).eval()
    rois = torch.randn(3, 8, 32)
    together = head.classify(rois)["logits"]
    alone = torch.cat([head.classify(rois[i:i + 1])["logits"] for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_image_loss_sum_and_mean():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    labels = torch.tensor([0])
    target = torch.tensor([[1.0, 0.0, 0.0]])
    per_class = torch.nn.functional.binary_cross_entropy_with_logits(logits, target,
                                                                     reduction="none")
    assert image_cls_loss(logits, labels, "sum") == pytest.approx(per_class.sum().item())
    assert image_cls_loss(logits, labels, "mean") == pytest.approx(per_class.mean().item())
    with pytest.raises(ValueError):
        image_cls_loss(logits, labels, "max")
