"""Bad input: every mistake is one clear line and exit status 2, never a traceback nor
a silent wrong result; known-good inputs stay accepted.

Each case is built in a temporary folder. Checked: the exit status, exactly one stderr line
``<tool>: error: <file or key>: <problem>``, no traceback, the inputs unchanged, no partial
output. Most cases call the tools' ``main(argv)`` in-process through :func:`oneshot_d2.cli.run_cli`
(as their ``__main__`` does); a few run the real scripts in a subprocess (end to end).
Each test's docstring says which one-line slip in the code it catches.
"""
import contextlib
import hashlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import warnings
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import pytest
import torch
from common import AFFINITY_QUICK, MASK_RCNN_QUICK, REPO, TINY, make_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image

from oneshot_d2.cli import _NoExpectedTraceback, error_message, run_cli
from oneshot_d2.config import ConfigError, load_config
from oneshot_d2.data import DatasetError
from oneshot_d2.data.build import build_oneshot_train_loader
from oneshot_d2.data.check import check_dataset_dicts
from oneshot_d2.data.datasets import label_masks_to_coco, load_csv_manifest, register_ct_seg
from oneshot_d2.data.datasets.builtin import register_cncb_layout, seg_json_path
from oneshot_d2.data.datasets.public_ct import medseg_to_coco
from oneshot_d2.data.io import open_image, read_gray, read_label_image, read_manifest
from oneshot_d2.data.mapper import CTDatasetMapper
from oneshot_d2.engine import OneShotTrainer
from oneshot_d2.engine.checks import check_dataset_classes
from oneshot_d2.engine.defaults import check_args

PREFIX = "badin"  # the phantom registered under this prefix (module fixture)
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
CHECK_DATASET = os.path.join(REPO, "tools", "check_dataset.py")
PREPARE_PHANTOM = os.path.join(REPO, "datasets", "prepare_phantom.py")
PREPARE_PUBLIC = os.path.join(REPO, "datasets", "prepare_public.py")


# ---------------------------------------------------------------------------------------------
# helpers
_TOOLS: Dict[str, object] = {}


def _tool(path: str):
    """The tool script at ``path`` imported as a module (once)."""
    if path not in _TOOLS:
        name = "tool_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _TOOLS[path] = module
    return _TOOLS[path]


def run_tool(path: str, *argv: str) -> Tuple[int, List[str]]:
    """Run a tool's ``main`` in-process as its ``__main__`` does; (status, stderr lines).
    (stderr is redirected here rather than with ``capsys``: Detectron2's loggers keep the
    ``sys.stdout`` of their first call, which ``capsys`` would close after the test.)"""
    prog = os.path.splitext(os.path.basename(path))[0]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = run_cli(_tool(path).main, list(argv), prog=prog)
    return status, [line for line in err.getvalue().splitlines() if line.strip()]


def assert_one_error(status: int, lines: List[str], prog: str, *needles: str,
                     exact: bool = True) -> str:
    """Exit status 2 and exactly one stderr line ``<prog>: error: ...`` holding ``needles``,
    the only line (``exact``) or, once the run has started (library log lines such as torch's
    "No CUDA runtime" may precede it), the last one and the only error."""
    assert status == 2, lines
    assert not any("Traceback" in line for line in lines), lines
    assert len(lines) == 1 if exact else sum("error" in line.lower() for line in lines) == 1, lines
    assert lines[-1].startswith(f"{prog}: error: "), lines
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


def snapshot(folder) -> Dict[str, str]:
    """relative path -> sha1 of every file under ``folder`` (to prove inputs unchanged)."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
    return out


def write_png(path, array: np.ndarray) -> str:
    assert cv2.imwrite(str(path), array)
    return str(path)


def truncate(path, keep: float = 0.5) -> None:
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * keep)])


@pytest.fixture(scope="module")
def phantom(phantom_root):
    """The session's small phantom, registered as ``badin_*`` (3 slice classes, 1 / 2 lesion
    categories in merge / separate mode)."""
    register_cncb_layout(phantom_root, PREFIX)
    return phantom_root


def seg_opts(out_dir, *extra: str) -> List[str]:
    return ["DATASETS.TRAIN", f"('{PREFIX}_seg_train',)", "DATASETS.TEST",
            f"('{PREFIX}_seg_test',)", "OUTPUT_DIR", str(out_dir), *TINY, *extra]


# ---------------------------------------------------------------------------------------------
# tools/train_net.py: config mistakes, caught before launch (in-process)
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


def test_debug_flag_keeps_the_traceback(tmp_path):
    """Catches: --debug ignored (the traceback a developer needs is swallowed), or --debug after
    the KEY VALUE options passed to yacs as a config key. Subprocess: the real script."""
    r = subprocess.run([sys.executable, TRAIN_NET, "--config-file", str(tmp_path / "x.yaml"),
                        "SOLVER.MAX_ITER", "1", "--debug"], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=str(tmp_path))
    assert r.returncode == 1, r.stderr
    assert "Traceback" in r.stderr and "x.yaml: config file not found" in r.stderr


def test_train_net_end_to_end_bad_key(tmp_path):
    """The real script (subprocess): one line, exit 2, nothing written. Catches: `__main__` not
    going through run_cli, or the error printed on stdout / with a traceback."""
    cfg_file = tmp_path / "typo.yaml"
    cfg_file.write_text(f'_BASE_: "{MASK_RCNN_QUICK}"\nSOLVER:\n  BASE_LRR: 0.1\n')
    r = subprocess.run([sys.executable, TRAIN_NET, "--config-file", str(cfg_file)],
                       capture_output=True, text=True, cwd=str(tmp_path),
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert_one_error(r.returncode, lines, "train_net", "typo.yaml: unknown config key "
                     "'SOLVER.BASE_LRR' (did you mean 'SOLVER.BASE_LR'?)")
    assert sorted(os.listdir(tmp_path)) == ["typo.yaml"]  # no output/ folder


def test_error_message_of_a_dataloader_worker_error():
    """A DatasetError raised in a DataLoader worker reaches the main process with the worker's
    traceback in its message. Catches: that multi-line message printed as is (a traceback
    after all) instead of its last line."""
    from torch._utils import ExceptionWrapper

    try:
        raise DatasetError("/d/img.png: unreadable image, truncated (dataset x)")
    except DatasetError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DatasetError) as info:
        wrapper.reraise()
    assert "Traceback" in str(info.value)
    assert error_message(info.value) == "/d/img.png: unreadable image, truncated (dataset x)"
    assert error_message(KeyError("Non-existent key: A.B")) == "Non-existent key: A.B"
    assert error_message(FileNotFoundError(2, "No such file", "/x")) == "/x: No such file"


def test_training_loop_logs_no_traceback_for_expected_errors():
    """Detectron2's training loop logs `Exception during training:` with the traceback before
    re-raising. Catches: the filter dropping real bugs' tracebacks, or not dropping ours."""
    import logging

    f = _NoExpectedTraceback()
    for exc, kept in ((DatasetError("a.png: bad"), False), (TypeError("bug"), True)):
        try:
            raise exc
        except Exception:
            record = logging.LogRecord("detectron2.engine.train_loop", logging.ERROR, __file__,
                                       1, "Exception during training:", (), sys.exc_info())
        assert f.filter(record) and (record.exc_info is not None) == kept


def test_known_harmless_warnings_filtered_and_nothing_else():
    """A tool's ``main`` that emits Detectron2 v0.6's two known-harmless warnings and a real
    one, run through run_cli as every tool's ``__main__`` does (every warning shown before it
    starts, as without pytest.ini's filters). Catches: run_cli no longer filtering them (the
    tools' logs repeat them), or the filter broadened (the real warning hidden too)."""
    def main(argv: Optional[List[str]]) -> int:
        warnings.warn("torch.meshgrid: in an upcoming release, it will be required to pass the "
                      "indexing argument.", UserWarning, stacklevel=1)
        warnings.warn("The given NumPy array is not writable, and PyTorch does not support "
                      "non-writable tensors.", UserWarning, stacklevel=1)
        warnings.warn("something real", UserWarning, stacklevel=1)
        return 0

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # also undoes pytest.ini's filters of the two
        status = run_cli(main, [], prog="tool")
    assert status == 0
    assert [str(w.message) for w in seen] == ["something real"]


# ---------------------------------------------------------------------------------------------
# images: one checked reader for converters, checker and training / evaluation
def _seg_copy(phantom_root, tmp_path, name: str):
    """A copy of the phantom test images registered as a segmentation dataset ``name``."""
    images = tmp_path / "imgs"
    shutil.copytree(os.path.join(phantom_root, "segmentation", "imgs"), images)
    register_ct_seg(name, seg_json_path(phantom_root, "test", "merge"), str(images), ["lesion"])
    return images


def test_16_bit_slices_refused_everywhere(tmp_path):
    """Silent before: a 16-bit PNG (HU + 1024) was 0..7 for the converter (cv2) and clipped to
    255 for the trainer (PIL), and the checker reported 0 errors. Catches: any of the converter,
    the checker or the mapper reading it without the bit-depth check."""
    hu = write_png(tmp_path / "hu.png", np.full((40, 40), 1024 - 600, np.uint16))
    mask = write_png(tmp_path / "m.png", np.zeros((40, 40), np.uint8))
    before = snapshot(tmp_path)
    with pytest.raises(DatasetError, match=r"hu\.png: 16-bit image .*values 424\.\.424.*8-bit"):
        label_masks_to_coco([(hu, mask)], str(tmp_path), {"lesion": (1,)},
                            out_json=str(tmp_path / "o.json"))
    found = check_dataset_dicts([{"file_name": hu, "height": 40, "width": 40}], "d")
    assert len(found) == 1 and found[0].severity == "error" and "16-bit" in found[0].problem
    cfg = make_cfg(MASK_RCNN_QUICK, *TINY)
    with pytest.raises(DatasetError, match=r"hu\.png: 16-bit image .*\(dataset mine\)"):
        CTDatasetMapper(cfg, False, ("mine",))({"file_name": hu, "height": 40, "width": 40})
    assert snapshot(tmp_path) == before  # no JSON written
    # a 16-bit colour PNG opens in PIL as 8-bit "RGB" (high byte only): refused as well
    rgb16 = write_png(tmp_path / "rgb16.png", np.full((8, 8, 3), 1024 - 600, np.uint16))
    with pytest.raises(DatasetError, match=r"rgb16\.png: 16-bit colour PNG"):
        open_image(rgb16, decode=False)


def test_index_entry_with_wrongly_typed_field(tmp_path, caplog):
    """A valid-JSON index whose entry has a field of the wrong type: skipped with a warning at
    import (non-strict), a DatasetError naming the entry when strict. Catches: the TypeError
    escaping and breaking `import oneshot_d2`."""
    from oneshot_d2.data.datasets.public_ct import register_public_datasets

    (tmp_path / "public").mkdir()
    (tmp_path / "public" / "index.json").write_text(
        '{"x_bad": {"type": "seg", "json": 5, "image_root": null, "classes": 3}}')
    assert register_public_datasets(str(tmp_path), strict=False) == []
    assert "x_bad" in caplog.text and "wrong type" in caplog.text
    with pytest.raises(DatasetError, match="entry 'x_bad' has a field of the wrong type"):
        register_public_datasets(str(tmp_path), strict=True)


def test_reader_agrees_with_detectron2(tmp_path):
    """The converters' reader and Detectron2's training reader see the same pixels (RGB, RGBA,
    palette, grey JPEG). Catches: read_gray going back to cv2 (other decoder, other luminance)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)
    paths = [tmp_path / "rgb.png", tmp_path / "rgba.png", tmp_path / "p.png", tmp_path / "g.jpg"]
    Image.fromarray(rgb).save(paths[0])
    Image.fromarray(np.dstack([rgb, np.full((9, 7), 128, np.uint8)])).save(paths[1])
    Image.fromarray(rgb).convert("P").save(paths[2])
    Image.fromarray(rgb[..., 0]).save(paths[3])
    for path in paths:
        assert np.array_equal(read_gray(str(path)), read_image(str(path), "L")[..., 0]), path


@pytest.mark.parametrize("damage, needle", [
    ("truncate", "unreadable image, truncated or corrupt"),
    ("empty", "empty image file (0 bytes)"),
    ("delete", "image file not found"),
])
def test_damaged_image_in_converter_and_checker(tmp_path, damage, needle):
    """Silent before: libjpeg warned about a truncated JPEG without naming it and the converter
    went on. Catches: a decoder that is not run to the end (header-only open), or a message
    without the file."""
    img = tmp_path / "s.jpg"
    cv2.imwrite(str(img), np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))
    mask = write_png(tmp_path / "m.png", np.zeros((64, 64), np.uint8))
    {"truncate": lambda: truncate(img), "empty": lambda: open(img, "wb").close(),
     "delete": lambda: os.remove(img)}[damage]()
    with pytest.raises(DatasetError, match=re.escape(f"{img}: {needle}")):
        label_masks_to_coco([(str(img), mask)], str(tmp_path), {"lesion": (1,)})
    found = check_dataset_dicts([{"file_name": str(img)}], "d")
    assert [(f.severity, f.file) for f in found] == [("error", str(img))]
    assert needle.split(" (")[0] in found[0].problem


@pytest.mark.parametrize("damage", ["truncate", "empty", "delete", "resize"])
def test_damaged_image_at_training_and_evaluation(phantom, tmp_path, unique_name, damage):
    """Images damaged after conversion fail in the data loaders with the file and the dataset
    named. Catches: the trainer's loaders built with Detectron2's plain DatasetMapper (a bare
    PIL OSError / SizeMismatchError mid-run)."""
    images = _seg_copy(phantom, tmp_path, unique_name)
    for name in os.listdir(images):
        path = images / name
        if damage == "truncate":
            truncate(path)
        elif damage == "empty":
            open(path, "wb").close()
        elif damage == "delete":
            os.remove(path)
        else:
            cv2.imwrite(str(path), np.zeros((100, 90), np.uint8))
    needle = {"truncate": "unreadable image, truncated or corrupt", "empty": "empty image file",
              "delete": "image file not found", "resize": "image is 90x100 (WxH) but its "
              "annotation records 128x128"}[damage]
    cfg = make_cfg(MASK_RCNN_QUICK, *TINY, "DATASETS.TRAIN", f"('{unique_name}',)")
    if damage == "delete":  # all images gone: the dataset itself refuses to load
        with pytest.raises(DatasetError, match=f"image file not found \\(4 of 4 images of "
                                               f"dataset '{unique_name}' missing"):
            DatasetCatalog.get(unique_name)
        return
    pattern = f"{images}/.*: {re.escape(needle)}.*dataset {unique_name}"
    with pytest.raises(DatasetError, match=pattern):
        next(iter(OneShotTrainer.build_test_loader(cfg, unique_name)))
    with pytest.raises(DatasetError, match=pattern):
        next(iter(build_oneshot_train_loader(cfg)))


# ---------------------------------------------------------------------------------------------
# registration and manifests
def test_register_ct_seg_missing_images_and_wrong_classes(phantom, tmp_path, unique_name):
    """README: missing images raise DatasetError. Silent before: a JSON whose images are all
    missing gave records; disagreeing class names gave Detectron2's metadata AssertionError.
    Catches: the existence check removed, or the category names compared in the wrong order."""
    json_file = seg_json_path(phantom, "train", "separate")
    register_ct_seg(unique_name + "_gone", json_file, str(tmp_path / "nowhere"), ["GGO",
                                                                                   "consolidation"])
    with pytest.raises(DatasetError, match=r"nowhere/.*: image file not found \(8 of 8 images"):
        DatasetCatalog.get(unique_name + "_gone")
    images = os.path.join(phantom, "segmentation", "imgs")
    register_ct_seg(unique_name + "_swap", json_file, images, ["consolidation", "GGO"])
    with pytest.raises(DatasetError, match=r"seg_train_separate\.json: categories \['GGO', "
                                           r"'consolidation'\] differ from the class names "
                                           r"\['consolidation', 'GGO'\]"):
        DatasetCatalog.get(unique_name + "_swap")
    register_ct_seg(unique_name + "_ok", json_file, images, ["GGO", "consolidation"])
    assert len(DatasetCatalog.get(unique_name + "_ok")) == 8


def _medseg_folder(tmp_path, manifest: str, bom: bool = False, crlf: bool = False) -> str:
    root = tmp_path / "medseg"
    root.mkdir()
    for name in ("a", "b", "c"):
        write_png(root / f"{name}.png", np.full((48, 48), 90, np.uint8))
        mask = np.zeros((48, 48), np.uint8)
        mask[5:20, 5:20] = 1
        write_png(root / f"{name}_m.png", mask)
    text = manifest.replace("\n", "\r\n") if crlf else manifest
    (root / "manifest.csv").write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return str(root)


def test_empty_split_cell_is_rejected(tmp_path):
    """Silent before: an empty split cell created a dataset named `medseg_seg_`. Catches: the
    non-empty check removed from the manifest reader or from prepare_public's columns; and any
    output (JSON, index) written before the error."""
    src = _medseg_folder(tmp_path, "split,image,mask\ntrain,a.png,a_m.png\n,b.png,b_m.png\n"
                                   "test,c.png,c_m.png\n")
    before = snapshot(src)
    out = tmp_path / "out"
    status, lines = run_tool(PREPARE_PUBLIC, "--medseg", src, "--out", str(out),
                             "--no-check")
    assert_one_error(status, lines, "prepare_public", "manifest.csv:3: empty 'split' cell")
    assert snapshot(src) == before and not os.path.exists(out / "public")  # no partial output
    csv = tmp_path / "cls.csv"
    csv.write_text("file_name,label,split\na.png,COVID,train\nb.png,COVID,\n")
    with pytest.raises(DatasetError, match=r"cls\.csv:3: empty 'split' cell"):
        load_csv_manifest(str(csv), ["NonCOVID", "COVID"], split="train", check_files=False)


def test_excel_manifest_with_bom_and_crlf_is_read(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark, so the first column was `\\ufeffsplit`
    and the manifest "lacked" it. Catches: encoding="utf-8" instead of "utf-8-sig", or CRLF
    line ends leaking into values."""
    src = _medseg_folder(tmp_path, "split,image,mask\ntrain,a.png,a_m.png\ntest,c.png,c_m.png\n",
                         bom=True, crlf=True)
    rows = read_manifest(os.path.join(src, "manifest.csv"), ("split", "image", "mask"))
    assert rows[0] == {"split": "train", "image": "a.png", "mask": "a_m.png"}
    written = medseg_to_coco(src, str(tmp_path / "out"), modes=("merge",))
    assert sorted(written) == ["test_merge", "train_merge"]


def test_duplicate_manifest_rows_warn_and_are_kept(tmp_path, caplog):
    """Catches: duplicates dropped silently (changes class shares) or not reported at all."""
    csv = tmp_path / "m.csv"
    csv.write_text("file_name,label\na.png,COVID\nb.png,NonCOVID\na.png,COVID\n")
    with caplog.at_level("WARNING"):
        rows = read_manifest(str(csv), ("file_name", "label"))
    assert len(rows) == 3
    assert any("m.csv: 1 row(s) listed more than once (lines 2, 4)" in r.getMessage()
               for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# dataset tools
@pytest.mark.parametrize("size", ["0", "24"])
def test_prepare_phantom_size_too_small(tmp_path, size):
    """Silent before: --size 24 wrote a set with 0 lesion instances (--size 0 crashed). Catches:
    the minimum not checked, or checked after the folder is created."""
    root = tmp_path / "ph"
    status, lines = run_tool(PREPARE_PHANTOM, "--root", str(root), "--size", size)
    assert_one_error(status, lines, "prepare_phantom", f"--size {size}: too small",
                     "the minimum is 64")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, needle", [
    (("--slices-per-patient", "0"), "--slices-per-patient 0: must be >= 1"),  # looped forever
    (("--seg-train", "-1"), "--seg-train -1: slice counts must be >= 0"),
    (("--cls-shares", "0", "0", "0"), "--cls-shares 0.0 0.0 0.0: shares must be >= 0"),
])
def test_prepare_phantom_bad_counts(tmp_path, args, needle):
    """Catches: a count check dropped (a ValueError traceback, or an endless loop in
    _patients for 0 slices per patient)."""
    status, lines = run_tool(PREPARE_PHANTOM, "--root", str(tmp_path / "ph"), "--size", "64",
                             *args)
    assert_one_error(status, lines, "prepare_phantom", needle)
    assert os.listdir(tmp_path) == []


def test_debug_environment_variable(monkeypatch):
    """ONESHOT_D2_DEBUG=1 keeps the traceback like --debug; "0" / "" do not."""
    from oneshot_d2.cli import debug_requested

    for value, expected in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("ONESHOT_D2_DEBUG", value)
        assert debug_requested([]) is expected
    monkeypatch.delenv("ONESHOT_D2_DEBUG")
    assert debug_requested(["--debug"]) and not debug_requested([])


def test_prepare_phantom_end_to_end_size_zero(tmp_path):
    """The real script (subprocess). Catches: `__main__` not going through run_cli."""
    r = subprocess.run([sys.executable, PREPARE_PHANTOM, "--root", str(tmp_path / "ph"),
                        "--size", "0"], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert_one_error(r.returncode, lines, "prepare_phantom", "--size 0: too small")


def test_check_dataset_json_under_a_regular_file(phantom, tmp_path):
    """Catches: the JSON path checked only after the (long) check, failing with a bare
    FileExistsError traceback from makedirs."""
    blocker = tmp_path / "report"
    blocker.write_text("keep me")
    status, lines = run_tool(CHECK_DATASET, "--train", f"{PREFIX}_seg_train",
                             "--json", str(blocker / "r.json"))
    assert_one_error(status, lines, "check_dataset", f"{blocker}: cannot create the folder of "
                     f"--json ({blocker} is a file, not a folder)")
    assert blocker.read_text() == "keep me"
    status, lines = run_tool(CHECK_DATASET, "--train", "no_such_set")
    assert_one_error(status, lines, "check_dataset", "unknown dataset(s) ['no_such_set']")


# ---------------------------------------------------------------------------------------------
# known-good inputs stay accepted
def test_known_good_slices_and_masks(tmp_path):
    """RGBA / palette slices, uint16 label masks, 1x1 and 8000x8000 slices. Catches: a bit-depth
    check that refuses uint16 *masks* or 4-channel / palette slices, and size limits."""
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((40, 40, 4), 120, np.uint8)).save(rgba)
    pal = tmp_path / "pal.png"
    Image.fromarray(np.full((40, 40), 70, np.uint8)).convert("P").save(pal)
    mask16 = np.zeros((40, 40), np.uint16)
    mask16[2:20, 2:20] = 2
    m16 = write_png(tmp_path / "m16.png", mask16)
    assert read_label_image(m16).dtype == np.uint16
    coco = label_masks_to_coco([(str(rgba), m16), (str(pal), m16)], str(tmp_path),
                               {"lesion": (1, 2)}, allowed_values=(0, 1, 2))
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 2
    one = write_png(tmp_path / "one.png", np.zeros((1, 1), np.uint8))
    assert read_gray(one).shape == (1, 1)
    big = write_png(tmp_path / "big.png", np.zeros((8000, 8000), np.uint8))
    assert read_gray(big).shape == (8000, 8000)
    assert open_image(big, decode=False).size == (8000, 8000)
    assert check_dataset_dicts([{"file_name": big, "height": 8000, "width": 8000},
                                {"file_name": str(rgba)}, {"file_name": str(pal)}], "d") == []


def test_config_loader_accepts_the_shipped_configs():
    """Catches: load_config rejecting valid configs (e.g. the renamed-key machinery)."""
    for path in (MASK_RCNN_QUICK, AFFINITY_QUICK):
        assert load_config(path).SOLVER.MAX_ITER > 0


@pytest.mark.parametrize("last_line, expected", [
    ("oneshot_d2.data.errors.DatasetError: /d/a.png: image file not found (dataset s)",
     "/d/a.png: image file not found (dataset s)"),
    ("FileNotFoundError: [Errno 2] No such file: '/d/a.png'", "[Errno 2] No such file: '/d/a.png'"),
    ("ZeroDivisionError: division by zero", None),  # a bug: the traceback stays
    ("KeyError: 'roi_heads'", None)])
def test_errors_of_launched_processes(last_line, expected):
    """An error in a process started by Detectron2's launch (--num-gpus > 1) reaches the parent
    as torch's ProcessRaisedException holding the worker's traceback. Catches: that traceback
    printed for bad input (an image missing mid-training under DDP), or a bug in a worker
    reduced to one line."""
    from torch.multiprocessing import ProcessRaisedException

    text = ("\n\n-- Process 1 terminated with the following error:\nTraceback (most recent "
            f"call last):\n  File \"train_loop.py\", line 149, in train\n{last_line}\n")

    def main(argv):
        raise ProcessRaisedException(text, 1, 4242)

    if expected is None:
        with pytest.raises(ProcessRaisedException):
            run_cli(main, [], prog="train_net")
        return
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert run_cli(main, [], prog="train_net") == 2
    assert err.getvalue().splitlines() == [f"train_net: error: {expected}"]
