"""Every config in configs/ loads on top of get_cfg() + add_oneshot_config."""
import glob
import os

import pytest
from detectron2.config import get_cfg

from oneshot_d2 import add_oneshot_config
from oneshot_d2.config import CHOICES, ConfigError, check_choices, load_config
from tests.common import REPO

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


def _cfg():
    cfg = get_cfg()
    add_oneshot_config(cfg)
    return cfg


def test_config_names_carry_their_schedule_and_set_no_output_dir():
    """``<model>_<backbone>_<schedule>_<data>.yaml``: quick schedules live in quick_schedules/,
    every other runnable config names its schedule (epochs or iterations); OUTPUT_DIR is derived
    from the name (oneshot_d2.engine.default_output_dir), never hard-coded."""
    import re

    runnable = [p for p in CONFIGS if not os.path.basename(p).startswith("Base")]
    assert len(runnable) == 21
    for path in runnable:
        name = os.path.basename(path)
        quick = os.path.basename(os.path.dirname(path)) == "quick_schedules"
        assert quick or re.search(r"_\d+(ep|iter)_", name), name
        with open(path) as f:
            assert "OUTPUT_DIR" not in f.read(), name


def test_output_dir_derived_from_the_config_name(tmp_path):

    from oneshot_d2.engine import default_output_dir

    path = os.path.join(REPO, "configs", "covid", "oneshot_affinity_R_50_FPN_100ep_cncb.yaml")
    expected = os.path.join("output", "oneshot_affinity_R_50_FPN_100ep_cncb")
    assert default_output_dir(path) == expected


def test_renamed_normalisation_key_says_where_it_went(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("INPUT:\n  PER_IMAGE_STANDARDIZE: True\n")
    with pytest.raises(KeyError, match="MODEL.PIXEL_NORM"):
        _cfg().merge_from_file(str(old))


def test_verify_results_reads_dataset_paths():
    from oneshot_d2.engine import verify_results

    cfg = _cfg()
    cfg.TEST.EXPECTED_RESULTS = [["ds_cls/classification", "accuracy", 90.0, 5.0],
                                 ["segm", "AP50", 60.0, 1.0]]
    results = {"ds_cls": {"classification": {"accuracy": 86.0}}, "segm": {"AP50": 60.5}}
    verify_results(cfg, results)
    results["ds_cls"]["classification"]["accuracy"] = 84.0
    with pytest.raises(RuntimeError, match="ds_cls/classification/accuracy = 84.0"):
        verify_results(cfg, results)
    with pytest.raises(RuntimeError, match="segm/AP50 = None"):
        verify_results(cfg, {"ds_cls": {"classification": {"accuracy": 90.0}}})


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])
def test_config_loads(path):
    cfg = _cfg()
    cfg.merge_from_file(path)
    check_choices(cfg, path)
    if cfg.MODEL.META_ARCHITECTURE == "CTImageClassifier":  # the plain classifier: no masks
        assert not cfg.MODEL.MASK_ON and not cfg.DATASETS.TRAIN_CLS
        return
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


def test_enumerated_keys_declare_their_values_beside_the_default():
    cfg = _cfg()
    assert len(CHOICES) >= 10
    for key, allowed in CHOICES.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        assert value in allowed, key


@pytest.mark.parametrize("key,value,hint", [
    ("MODEL.ONESHOT.IMAGE_HEAD.LOSS_REDUCTION", "summ", "did you mean 'sum'"),
    ("MODEL.PIXEL_NORM", "per-image", "did you mean 'per_image'"),
    ("SOLVER.IMAGE_HEAD_OPTIMIZER", "adam", "('', 'SGD', 'Adam', 'AdamW')"),
    ("PREDICT.PATIENT_RULE", "max", "('top_k_mean', 'fraction')"),
])
def test_bad_enumerated_value_is_refused_when_the_config_loads(tmp_path, key, value, hint):
    """A typo in an enumerated key is one ConfigError at load time (naming the file, the key and
    the allowed values), not a traceback at the iteration that first uses it."""
    *path, last = key.split(".")
    yaml_text = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(path))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text + f"{'  ' * len(path)}{last}: {value!r}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(bad))
    message = str(e.value)
    assert message.startswith(f"{bad}: {key}: {value!r} is not one of ")
    assert hint in message
    with pytest.raises(ConfigError, match=f"command line: {key}"):
        load_config(config_path_of_demo(), [key, value])


def config_path_of_demo() -> str:
    return os.path.join(REPO, "configs", "quick_schedules",
                        "oneshot_affinity_R_18_FPN_phantom_quick.yaml")


def _base_of(path: str):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("_BASE_:"):
                name = line.split(":", 1)[1].split("#")[0].strip().strip("\"'")
                return os.path.normpath(os.path.join(os.path.dirname(path), name))
    return None


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])
def test_base_chain_is_at_most_three_files(path):
    """As in Detectron2's configs: a file, its _BASE_ and at most one more."""
    chain = [path]
    while _base_of(chain[-1]):
        chain.append(_base_of(chain[-1]))
    assert len(chain) <= 3, [os.path.relpath(p, REPO) for p in chain]


@pytest.mark.parametrize("gpu", [False, True])
def test_one_cuda_policy(monkeypatch, gpu):
    """A CUDA device from the config falls back to the CPU without a GPU; one asked for by name
    (a tool's --device) is refused. Catches: a tool with its own, different rule again."""
    from oneshot_d2.config import resolve_device
    from oneshot_d2.errors import UsageError

    monkeypatch.setattr("torch.cuda.is_available", lambda: gpu)
    cfg = _cfg()
    cfg.MODEL.DEVICE = "cuda"
    assert resolve_device(cfg) == cfg.MODEL.DEVICE == ("cuda" if gpu else "cpu")
    assert resolve_device(cfg, "cpu") == cfg.MODEL.DEVICE == "cpu"
    if gpu:
        assert resolve_device(cfg, "cuda") == "cuda"
    else:
        with pytest.raises(UsageError, match="--device 'cuda': no CUDA GPU"):
            resolve_device(cfg, "cuda")
