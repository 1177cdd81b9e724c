"""CTImageClassifier, the plain CNN baseline: the shipped config trains and evaluates, pooling
covers each image's own extent, predictions do not depend on batch neighbours, and its
checkpoint warm-starts a one-shot model's backbone."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from detectron2.utils.events import EventStorage

from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.engine import OneShotTrainer
from oneshot_d2.modeling.image_heads import image_cls_loss
from oneshot_d2.modeling.meta_arch import CTImageClassifier, standardize_per_image
from tests.common import TINY, config_path, make_cfg, seeded_model

CLASSIFIER = config_path("real/image_classifier_R_18_FPN_1200iter_ucsd_2cls.yaml")
REAL_ONESHOT = config_path("real/oneshot_affinity_R_18_FPN_800iter_real_2cls.yaml")


@pytest.fixture(scope="module")
def cfg(phantom_root):
    register_cncb_layout(phantom_root, "ic")
    # the phantom has 3 slice classes (the config's 2 are refused: test below)
    return make_cfg(CLASSIFIER, *TINY, "MODEL.ONESHOT.NUM_IMAGE_CLASSES", "3",
                    "DATASETS.TRAIN", "('ic_cls_train',)", "DATASETS.TEST", "('ic_cls_test',)",
                    "SOLVER.IMS_PER_BATCH", "3")


@pytest.mark.slow
def test_shipped_config_trains_one_step_and_infers(cfg):
    trainer = OneShotTrainer(cfg)
    model = trainer.model
    assert isinstance(model, CTImageClassifier)
    batch = next(iter(trainer.data_loader))
    assert len(batch) == 3 and all("image_label" in x for x in batch)
    with EventStorage(0) as storage:
        losses = model(batch)
        acc = storage.latest()["image_cls/train_accuracy"][0]
    assert set(losses) == {"loss_image_cls"}
    # the one-shot model's loss (per-class BCE summed over classes) on the model's logits
    labels = torch.tensor([x["image_label"] for x in batch])
    with torch.no_grad():
        expected = image_cls_loss(model.logits(batch), labels, "sum")
    assert float(losses["loss_image_cls"].detach()) == pytest.approx(float(expected), rel=1e-5)
    assert 0.0 <= acc <= 1.0 and acc * 3 == pytest.approx(round(acc * 3))
    losses["loss_image_cls"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert [o["image_cls"].shape for o in out] == [(3,)] * 3
    torch.testing.assert_close(torch.stack([o["image_cls"] for o in out]).sum(1),
                               torch.ones(3))


@pytest.mark.slow
def test_trainer_evaluates_with_the_classification_evaluator(cfg, tmp_path):
    c = cfg.clone()
    c.OUTPUT_DIR = str(tmp_path)
    model = seeded_model(c)
    results = OneShotTrainer.test(c, model)
    assert {"accuracy", "macro_auc"} <= set(results["classification"])


class _IdentityBackbone(Backbone):
    """``p2`` = the normalised image itself (stride 1), ``p3`` = its 2x average pool."""

    def forward(self, x):
        return {"p2": x, "p3": torch.nn.functional.avg_pool2d(x, 2)}

    def output_shape(self):
        return {"p2": ShapeSpec(channels=3, stride=1), "p3": ShapeSpec(channels=3, stride=2)}

    @property
    def size_divisibility(self):
        return 32


@pytest.mark.parametrize("size", [(40, 24), (41, 25)])
def test_pooling_covers_each_image_own_extent(size):
    torch.manual_seed(0)
    model = CTImageClassifier(backbone=_IdentityBackbone(), in_features=["p2", "p3"],
                              num_classes=2, pixel_norm="per_image", pixel_mean=[0.0] * 3,
                              pixel_std=[1.0] * 3)
    small = {"image": torch.rand(3, *size) * 255}
    large = {"image": torch.rand(3, 64, 64) * 255}
    logits = model.logits([small, large])  # small is zero-padded to 64 x 64
    h, w = size
    norm = standardize_per_image(small["image"])
    padded = torch.nn.functional.pad(norm, (0, 64 - w, 0, 64 - h))
    # p3 cells holding any of the image: ceil(41 / 2) = 21 rows, ceil(25 / 2) = 13 columns
    p3 = torch.nn.functional.avg_pool2d(padded, 2)[:, :(h + 1) // 2, :(w + 1) // 2]
    pooled = torch.cat([norm.mean(dim=(1, 2)), p3.mean(dim=(1, 2))])
    expected = model.classifier(pooled)
    torch.testing.assert_close(logits[0], expected, rtol=1e-5, atol=1e-5)


def test_class_count_of_a_classification_training_set_is_checked(cfg):
    from oneshot_d2.data.build import build_oneshot_train_loader

    c = cfg.clone()
    c.MODEL.ONESHOT.NUM_IMAGE_CLASSES = 2
    with pytest.raises(ValueError, match="'ic_cls_train' has 3 image classes"):
        build_oneshot_train_loader(c)


def test_prediction_does_not_depend_on_batch_neighbours(cfg):
    model = seeded_model(cfg).eval()
    batch = next(iter(OneShotTrainer.build_train_loader(cfg)))
    x = batch[0]
    # larger than x in both sides: without grouping by size, x would be padded to 256 x 256
    other = {"image": torch.randint(0, 255, (3, 256, 256), dtype=torch.uint8),
             "height": 256, "width": 256}
    with torch.no_grad():
        alone = model([x])[0]["image_cls"]
        batched = model([other, x, other])[1]["image_cls"]
    torch.testing.assert_close(alone, batched, rtol=0, atol=0)


def test_checkpoint_warm_starts_the_oneshot_backbone(cfg, tmp_path):
    classifier = seeded_model(cfg, seed=1)
    DetectionCheckpointer(classifier, save_dir=str(tmp_path)).save("cls")
    oneshot_cfg = make_cfg(REAL_ONESHOT, *TINY, "MODEL.WEIGHTS", str(tmp_path / "cls.pth"))
    oneshot = seeded_model(oneshot_cfg, seed=2)
    DetectionCheckpointer(oneshot).load(oneshot_cfg.MODEL.WEIGHTS)
    warm = oneshot.backbone.state_dict()
    source = classifier.backbone.state_dict()
    assert set(warm) == set(source)
    for key, value in source.items():
        torch.testing.assert_close(warm[key], value, rtol=0, atol=0)
