"""Bad input to ``tools/train_net.py``: config, dataset, class-count, output-folder and weights
mistakes are one line ``train_net: error: <file or key>: <problem>`` and exit status 2, caught
before ``launch``. Each test's docstring says which one-line slip in the code it catches."""
import os
import subprocess
import sys

import pytest
import torch

from oneshot_d2.config import ConfigError, load_config
from oneshot_d2.engine import OneShotTrainer
from oneshot_d2.engine.checks import check_dataset_classes
from oneshot_d2.engine.defaults import check_args
from tests.bad_input import (
    PREFIX,
    TRAIN_NET,
    TRAIN_NET_SCRIPT,
    _tool,
    assert_one_error,
    run_tool,
    seg_opts,
    snapshot,
    truncate,
)
from tests.common import AFFINITY_QUICK, MASK_RCNN_QUICK, make_cfg


@pytest.mark.parametrize("yaml_text, opts, needles", [
    ("SOLVER:\n  MAX_ITERS: 10\n", (),
     ("bad.yaml: unknown config key 'SOLVER.MAX_ITERS'", "did you mean 'SOLVER.MAX_ITER'")),
    ("SOLVER:\n  MAX_ITER: 10\n   BASE_LR: 0.1\n", (), ("bad.yaml:4:", "YAML syntax error")),
    ("SOLVER:\n  MAX_ITER: ten\n", (),
     ("bad.yaml: SOLVER.MAX_ITER: value 'ten' is of type str, expected int",)),
    ("", ("MODEL.ROI_HEAD.NUM_CLASSES", "2"),
     ("command line: unknown config key 'MODEL.ROI_HEAD.NUM_CLASSES'",
      "did you mean 'MODEL.ROI_HEADS.NUM_CLASSES'")),
    ("", ("SOLVER.IMS_PER_BATCH", "two"), ("command line: SOLVER.IMS_PER_BATCH: value 'two'",)),
    # a section replaced by a value: yacs' message holds the whole section's dump
    ("", ("MODEL.ROI_HEADS", "3"), ("command line: MODEL.ROI_HEADS: is a section of keys",)),
    ("SOLVER: [1, 2]\n", (), ("bad.yaml: SOLVER: is a section of keys",)),
])
def test_config_errors_are_one_line(tmp_path, yaml_text, opts, needles):
    """Catches: yacs' KeyError / ValueError or yaml's ScannerError escaping as a traceback, the
    file or key missing from the line, no closest-key suggestion, no YAML line number, and a
    run that starts anyway (OUTPUT_DIR created)."""
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(f'_BASE_: "{MASK_RCNN_QUICK}"\n' + yaml_text)
    before = snapshot(tmp_path)
    status, lines = run_tool(TRAIN_NET, "--config-file", str(cfg_file),
                             "OUTPUT_DIR", str(tmp_path / "out"), *opts)
    assert_one_error(status, lines, "train_net", *needles)
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_config_file_not_utf8(tmp_path):
    """A config saved as UTF-16 (Windows PowerShell `>`). Catches: the bare codec name
    ('utf-8') as the whole message."""
    cfg_file = tmp_path / "u16.yaml"
    cfg_file.write_bytes(f'_BASE_: "{MASK_RCNN_QUICK}"\n'.encode("utf-16"))
    status, lines = run_tool(TRAIN_NET, "--config-file", str(cfg_file),
                             "OUTPUT_DIR", str(tmp_path / "out"))
    assert_one_error(status, lines, "train_net", "u16.yaml: not UTF-8 text")


@pytest.mark.parametrize("setup_files, config, needle", [
    ({}, "missing.yaml", "missing.yaml: config file not found"),
    ({"child.yaml": '_BASE_: "nope.yaml"\n'}, "child.yaml",
     "nope.yaml: config file not found (a _BASE_ of"),
    ({"empty.yaml": ""}, "empty.yaml", "empty.yaml: not a YAML mapping of config keys"),
])
def test_missing_or_empty_config_file(tmp_path, setup_files, config, needle):
    """Catches: Detectron2's bare AssertionError / FileNotFoundError / TypeError for a config
    (or its _BASE_) that is missing or empty."""
    for name, text in setup_files.items():
        (tmp_path / name).write_text(text)
    status, lines = run_tool(TRAIN_NET, "--config-file", str(tmp_path / config))
    assert_one_error(status, lines, "train_net", needle)


@pytest.mark.parametrize("key, value, needle", [
    ("SOLVER.MAX_ITER", "0", "SOLVER.MAX_ITER: must be a positive number of iterations, got 0"),
    ("SOLVER.MAX_ITER", "-5", "got -5"),
    ("SOLVER.IMS_PER_BATCH", "0", "SOLVER.IMS_PER_BATCH: must be a positive number of images"),
    ("SOLVER.IMS_PER_BATCH", "-2", "SOLVER.IMS_PER_BATCH: must be a positive number"),
])
def test_non_positive_batch_or_iterations(phantom, tmp_path, key, value, needle):
    """Catches: `<= 0` written `< 0` (0 iterations trains nothing, exit 0), or the check left to
    Detectron2's assertion / ZeroDivisionError deep in the loader."""
    status, lines = run_tool(TRAIN_NET, "--config-file", MASK_RCNN_QUICK,
                             *seg_opts(tmp_path / "out", key, value))
    assert_one_error(status, lines, "train_net", needle)
    assert not (tmp_path / "out").exists()


def test_output_dir_not_creatable(phantom, tmp_path):
    """Catches: Detectron2's mkdirs failing with a bare FileExistsError traceback, or a message
    that does not say which part of the path is in the way."""
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    status, lines = run_tool(TRAIN_NET, "--config-file", MASK_RCNN_QUICK,
                             *seg_opts(blocker / "out"))
    assert_one_error(status, lines, "train_net", f"{blocker / 'out'}: cannot create the "
                     f"OUTPUT_DIR ({blocker} is a file, not a folder)")
    assert blocker.read_text() == "a regular file"


def test_num_image_classes_not_matching_the_data(phantom, tmp_path):
    """Catches: the class-count check running only after the model is built (or not at all),
    so the run starts with a 2-class head for 3-class data."""
    status, lines = run_tool(
        TRAIN_NET, "--config-file", AFFINITY_QUICK, *seg_opts(tmp_path / "out"),
        "DATASETS.TRAIN_CLS", f"('{PREFIX}_cls_train',)", "MODEL.ONESHOT.NUM_IMAGE_CLASSES", "2")
    assert_one_error(status, lines, "train_net", f"dataset '{PREFIX}_cls_train' has 3 image "
                     "classes", "MODEL.ONESHOT.NUM_IMAGE_CLASSES is 2")
    assert not (tmp_path / "out").exists()


def test_roi_heads_num_classes_smaller_than_the_categories(phantom, tmp_path):
    """Silent before: 2 lesion categories with NUM_CLASSES 1 trained, the second category on
    the background index. Catches: the check missing, or `>` written `!=` / `<`."""
    opts = seg_opts(tmp_path / "out", "DATASETS.TRAIN", f"('{PREFIX}_seg_sep_train',)",
                    "DATASETS.TEST", f"('{PREFIX}_seg_sep_test',)")
    status, lines = run_tool(TRAIN_NET, "--config-file", MASK_RCNN_QUICK, *opts)
    assert_one_error(status, lines, "train_net", "MODEL.ROI_HEADS.NUM_CLASSES: 1",
                     f"dataset '{PREFIX}_seg_sep_train' has 2 categories", "set it to 2")
    with pytest.raises(ConfigError):  # also refused when the trainer is built directly
        OneShotTrainer(make_cfg(MASK_RCNN_QUICK, *opts))
    check_dataset_classes(make_cfg(MASK_RCNN_QUICK, *opts, "MODEL.ROI_HEADS.NUM_CLASSES", "3"))


@pytest.mark.parametrize("weights, needle", [
    ("missing.pth", "missing.pth: MODEL.WEIGHTS file not found"),
    ("empty.pth", "empty.pth: MODEL.WEIGHTS file is empty (0 bytes)"),
    (".", "MODEL.WEIGHTS a folder, not a checkpoint file"),
])
def test_weights_missing_or_empty(phantom, tmp_path, weights, needle):
    """Catches: fvcore's `Checkpoint ... not found!` AssertionError after the model is built
    (OUTPUT_DIR already written), or a missing file taken for "train from scratch"."""
    (tmp_path / "empty.pth").write_bytes(b"")
    path = str(tmp_path / weights) if weights != "." else str(tmp_path)
    status, lines = run_tool(TRAIN_NET, "--config-file", MASK_RCNN_QUICK,
                             *seg_opts(tmp_path / "out", "MODEL.WEIGHTS", path))
    assert_one_error(status, lines, "train_net", needle)
    assert not (tmp_path / "out").exists()


def test_eval_only_without_weights_is_refused(phantom, tmp_path):
    """Silent before: --eval-only without MODEL.WEIGHTS printed AP tables of a random model.
    Catches: the refusal missing, or the opt-in flag not honoured."""
    status, lines = run_tool(TRAIN_NET, "--config-file", MASK_RCNN_QUICK, "--eval-only",
                             *seg_opts(tmp_path / "out"))
    assert_one_error(status, lines, "train_net", "MODEL.WEIGHTS: empty",
                     "randomly initialised model", "--allow-random-weights")
    assert not (tmp_path / "out").exists()
    args = _tool(TRAIN_NET).parse_args(["--config-file", MASK_RCNN_QUICK, "--eval-only",
                                        "--allow-random-weights", *seg_opts(tmp_path / "out")])
    check_args(args)  # the explicit opt-in passes the checks


@pytest.mark.parametrize("case", ["not_a_checkpoint", "truncated", "empty_last_checkpoint",
                                  "partial_weights", "foreign_torch_file"])
def test_unreadable_weights_at_load_time(phantom, tmp_path, case):
    """Errors that only the checkpointer sees (after the model is built), in the process that
    evaluates. Catches: torch's misleading `weights_only` message or a zip error without the
    file name, --eval-only --resume with an empty last_checkpoint falling back to a random
    model silently, and --eval-only of a file holding only some of the model's weights (e.g.
    ImageNet backbone weights: the heads would be evaluated at random values)."""
    out = tmp_path / "out"
    flags, opts = ["--eval-only"], []
    if case == "not_a_checkpoint":
        weights = tmp_path / "notes.pth"
        weights.write_text("these are my notes, not weights\n")
        opts, needle = ["MODEL.WEIGHTS", str(weights)], f"{weights}: not a PyTorch checkpoint"
    elif case == "truncated":
        weights = tmp_path / "model.pth"
        torch.save({"model": {"w": torch.zeros(1000)}}, weights)
        truncate(weights)
        opts, needle = ["MODEL.WEIGHTS", str(weights)], f"{weights}: truncated or corrupt"
    elif case == "foreign_torch_file":  # e.g. a PyTorch Lightning checkpoint
        weights = tmp_path / "lightning.pth"
        torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, weights)
        opts = ["MODEL.WEIGHTS", str(weights)]
        needle = f"{weights}: not a Detectron2 / oneshot_d2 checkpoint"
    elif case == "partial_weights":
        weights = tmp_path / "backbone.pth"
        torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(1)}}, weights)
        opts, needle = ["MODEL.WEIGHTS", str(weights)], f"{weights}: lacks "
    else:
        out.mkdir()
        (out / "last_checkpoint").write_text("")
        flags, needle = ["--eval-only", "--resume"], "MODEL.WEIGHTS: empty"
    before = snapshot(tmp_path)
    status, lines = run_tool(TRAIN_NET, "--config-file", MASK_RCNN_QUICK, *flags,
                             *seg_opts(out, *opts))
    assert_one_error(status, lines, "train_net", needle, exact=False)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # inputs unchanged
    assert not any(k.endswith(".pth") or "inference" in k for k in set(after) - set(before))


@pytest.mark.slow
def test_train_net_end_to_end_bad_key(tmp_path):
    """The real script (subprocess): one line, exit 2, nothing written. Catches: `__main__` not
    going through run_cli, or the error printed on stdout / with a traceback."""
    cfg_file = tmp_path / "typo.yaml"
    cfg_file.write_text(f'_BASE_: "{MASK_RCNN_QUICK}"\nSOLVER:\n  BASE_LRR: 0.1\n')
    r = subprocess.run([sys.executable, TRAIN_NET_SCRIPT, "--config-file", str(cfg_file)],
                       capture_output=True, text=True, cwd=str(tmp_path),
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert_one_error(r.returncode, lines, "train_net", "typo.yaml: unknown config key "
                     "'SOLVER.BASE_LRR' (did you mean 'SOLVER.BASE_LR'?)")
    assert sorted(os.listdir(tmp_path)) == ["typo.yaml"]  # no output/ folder


def test_config_loader_accepts_the_shipped_configs():
    """Catches: load_config rejecting valid configs (e.g. the renamed-key machinery)."""
    for path in (MASK_RCNN_QUICK, AFFINITY_QUICK):
        assert load_config(path).SOLVER.MAX_ITER > 0
