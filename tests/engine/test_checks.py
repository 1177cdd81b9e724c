"""Settings that would train silently crippled are refused: frozen random layers, batch norm over
one slice's RoIs, image classes that do not match the data."""
import glob
import os

import pytest
from detectron2.config import get_cfg

from oneshot_d2 import add_oneshot_config
from oneshot_d2.data.build import build_oneshot_train_loader, check_image_classes
from oneshot_d2.data.datasets import register_csv_cls
from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.engine import OneShotTrainer
from oneshot_d2.engine.checks import check_training_config, frozen_random_layers
from tests.common import AFFINITY_QUICK, REPO, TINY, config_path, make_cfg

SHIPPED = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"),
                                      recursive=True) if not os.path.basename(p).startswith("Base"))


def test_detectron2_defaults_from_scratch_are_refused():
    cfg = get_cfg()
    add_oneshot_config(cfg)
    cfg.MODEL.WEIGHTS = ""
    found = frozen_random_layers(cfg)
    assert found[0].startswith("MODEL.BACKBONE.FREEZE_AT=2")
    assert "MODEL.RESNETS.NORM=FrozenBN" in found[1]
    with pytest.raises(ValueError, match="FREEZE_AT=2.*MODEL.RESNETS.NORM=FrozenBN"):
        check_training_config(cfg)
    cfg.MODEL.WEIGHTS = "pretrained.pkl"  # fine-tuning: frozen pretrained layers are intended
    assert frozen_random_layers(cfg) == []
    check_training_config(cfg)


def test_frozen_bn_elsewhere_is_found():
    cfg = make_cfg(AFFINITY_QUICK)
    assert frozen_random_layers(cfg) == []
    cfg.MODEL.FPN.NORM = "FrozenBN"
    assert frozen_random_layers(cfg) == [
        "MODEL.FPN.NORM=FrozenBN (an identity without pretrained weights)"]


@pytest.mark.parametrize("path", SHIPPED, ids=[os.path.relpath(p, REPO) for p in SHIPPED])
def test_every_shipped_config_trains_from_scratch_or_from_its_pretrained_trunk(path):
    """The shipped files themselves. Configs that name pretrained:// trunk weights freeze
    pretrained layers (accepted with the weights, refused without); every other config trains
    from scratch without frozen layers (MODEL.WEIGHTS emptied: offline)."""
    cfg = make_cfg(path)
    if cfg.MODEL.WEIGHTS.startswith("pretrained://"):
        check_training_config(cfg)
        cfg.MODEL.WEIGHTS = ""
        if cfg.MODEL.BACKBONE.FREEZE_AT > 0:
            with pytest.raises(ValueError, match="frozen at random values"):
                check_training_config(cfg)
            return
    cfg.MODEL.WEIGHTS = ""
    check_training_config(cfg)
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0


def test_paper_configs_are_paper_faithful():
    cfg = make_cfg(config_path("covid/oneshot_affinity_R_50_FPN_100ep_cncb.yaml"))
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.RESNETS.NORM == "BN"
    assert cfg.SOLVER.CLS_IMS_PER_BATCH == 1 and cfg.MODEL.ONESHOT.IMAGE_HEAD.NORM == "GN"
    assert cfg.MODEL.PIXEL_NORM == "per_image"


def test_batch_norm_head_over_one_slice_is_refused():
    cfg = make_cfg(AFFINITY_QUICK, "SOLVER.CLS_IMS_PER_BATCH", "1")
    with pytest.raises(ValueError, match="IMAGE_HEAD.NORM='BN' with SOLVER.CLS_IMS_PER_BATCH=1"):
        OneShotTrainer(cfg)  # refused before anything is built
    cfg.MODEL.ONESHOT.IMAGE_HEAD.NORM = "GN"
    check_training_config(cfg)
    cfg.MODEL.ONESHOT.IMAGE_HEAD.NORM = "BN"
    cfg.SOLVER.CLS_IMS_PER_BATCH = 2
    check_training_config(cfg)


@pytest.fixture
def two_class_set(tmp_path, unique_name):
    import cv2
    import numpy as np

    rows = ["file_name,label"]
    for i, label in enumerate(["COVID", "NonCOVID", "COVID"]):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((32, 32), 40 * i, np.uint8))
        rows.append(f"{i}.png,{label}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    register_csv_cls(unique_name, str(tmp_path / "m.csv"), class_names=["NonCOVID", "COVID"],
                     image_root=str(tmp_path))
    return unique_name


def test_num_image_classes_must_match_the_data(two_class_set, phantom_root):
    register_cncb_layout(phantom_root, "nic")
    cfg = make_cfg(AFFINITY_QUICK, *TINY, "DATASETS.TRAIN", "('nic_seg_train',)",
                   "DATASETS.TRAIN_CLS", f"('{two_class_set}',)")
    with pytest.raises(ValueError, match=f"dataset '{two_class_set}' has 2 image classes "
                                         r"\['NonCOVID', 'COVID'\] but "
                                         "MODEL.ONESHOT.NUM_IMAGE_CLASSES is 3"):
        build_oneshot_train_loader(cfg)
    check_image_classes(two_class_set, 2)  # matching: fine
    with pytest.raises(ValueError, match="NUM_IMAGE_CLASSES is 3"):
        OneShotTrainer.build_evaluator(cfg, two_class_set)


def test_image_label_out_of_range_names_the_file(two_class_set):
    from detectron2.data import DatasetCatalog

    dicts = DatasetCatalog.get(two_class_set)
    dicts[1]["image_label"] = 2
    with pytest.raises(ValueError, match=r"1\.png has image_label 2, outside 0\.\.1"):
        check_image_classes(two_class_set, 2, dicts)
    del dicts[1]["image_label"]
    with pytest.raises(ValueError, match=r"1\.png has no image_label"):
        check_image_classes(two_class_set, 2, dicts)


