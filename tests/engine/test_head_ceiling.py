"""The image head's ceiling on a frozen detector (tools/image_head_ceiling.py)."""
import json

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog

from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.engine.head_ceiling import cache_roi_features, train_head_on_features
from tests.common import AFFINITY_QUICK, SMALL_HEADS, TINY, make_cfg, seeded_model

pytestmark = pytest.mark.slow


OPTS = TINY + SMALL_HEADS


@pytest.fixture(scope="module")
def setup(phantom_root):
    register_cncb_layout(phantom_root, "ceil")
    cfg = make_cfg(AFFINITY_QUICK, *OPTS)
    model = seeded_model(cfg)
    model.roi_heads.copy_seg_to_cls()
    return cfg, model


def test_cached_features_are_the_models_roi_batch(setup):
    cfg, model = setup
    dicts = DatasetCatalog.get("ceil_cls_train")[:3]
    data = cache_roi_features(cfg, model, dicts, flip=True, batch_size=2)
    beta = cfg.MODEL.ONESHOT.ROI_BATCH_SIZE
    assert data.features.shape == (6, beta, cfg.MODEL.ROI_MASK_HEAD.CONV_DIM, 28, 28)
    assert data.features.dtype == torch.float16
    assert data.image_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.view.tolist() == [0, 1, 0, 1, 0, 1]
    assert data.labels.tolist() == [d["image_label"] for d in dicts for _ in (0, 1)]
    assert not torch.equal(data.features[0], data.features[1])  # the flip is another view
    # view 0 of image 1 is what the model's own classification path computes
    model.eval()
    from detectron2.data import DatasetMapper
    x = DatasetMapper(cfg, is_train=False)(dict(dicts[1]))
    with torch.no_grad():
        images = model.preprocess_image([x])
        feats = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, feats, None)
        ref = model.roi_heads.forward_cls_features(feats, proposals)["mask_features"][0]
    torch.testing.assert_close(data.features[2].float(), ref, rtol=1e-3, atol=1e-3)


def test_head_fits_its_training_features(setup):
    cfg, model = setup
    train = cache_roi_features(cfg, model, DatasetCatalog.get("ceil_cls_train"))
    val = cache_roi_features(cfg, model, DatasetCatalog.get("ceil_cls_val"))
    names = ["Normal", "CP", "COVID-19"]
    history = train_head_on_features(cfg, train, val, names, epochs=5, lr=3e-3,
                                     batch_size=3, seed=0, precise_bn_iters=4)
    assert [r["epoch"] for r in history] == list(range(1, 6))
    assert {"train_loss", "train/accuracy", "val/accuracy", "val/auc", "val/loss"} <= set(
        history[0])
    # 6 training images memorised: the loss falls and the training accuracy reaches 100 %
    # (measured: 100 % from epoch 3, the loss at epoch 5 about 0.2 of epoch 1's)
    assert history[-1]["train/loss"] < 0.5 * history[0]["train/loss"]
    assert history[-1]["train/accuracy"] == 100.0


def test_tool_writes_curves(setup, tmp_path):
    cfg, model = setup
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("m")
    from oneshot_d2.cli import image_head_ceiling as tool

    out = tmp_path / "ceiling"
    result = tool.main(["--config-file", AFFINITY_QUICK, "--train", "ceil_cls_train",
                        "--val", "ceil_cls_val", "--output", str(out), "--epochs", "2",
                        "--batch-size", "3", *OPTS, "MODEL.WEIGHTS", str(tmp_path / "m.pth")])
    saved = json.loads((out / "ceiling.json").read_text())
    assert len(saved["history"]) == 2 and saved["train"] == "ceil_cls_train"
    assert saved["best_val_auc_epoch"] == result["best_val_auc_epoch"]
