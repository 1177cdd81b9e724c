"""Every config in configs/ loads on top of get_cfg() + add_oneshot_config."""
import glob
import os

import pytest
from detectron2.config import get_cfg

from oneshot_d2 import add_oneshot_config

from conftest import REPO

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


def _cfg():
    cfg = get_cfg()
    add_oneshot_config(cfg)
    return cfg


def test_configs_found():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])
def test_config_loads(path):
    cfg = _cfg()
    cfg.merge_from_file(path)
    assert cfg.MODEL.MASK_ON
    assert cfg.INPUT.MASK_FORMAT == "bitmask"


def test_paper_defaults():
    cfg = _cfg()
    assert cfg.MODEL.ONESHOT.ROI_BATCH_SIZE == 8
    assert cfg.MODEL.ONESHOT.CLS_NMS_THRESH == 0.25
    assert cfg.MODEL.ONESHOT.IMAGE_HEAD.NUM_AFFINITIES == 128
    assert cfg.MODEL.ONESHOT.IMAGE_HEAD.LOSS_REDUCTION == "sum"
    assert cfg.MODEL.ONESHOT.COPY.MODE == "best"
    assert cfg.SOLVER.OPTIMIZER == "SGD"


def test_typo_in_yaml_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  ONESHOT:\n    ROI_BATCH_SIZ: 8\n")
    with pytest.raises(KeyError):
        _cfg().merge_from_file(str(bad))
