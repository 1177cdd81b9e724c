"""Data must never be lost: ``prepare_phantom --overwrite`` (marker, atomic swap),
checkpoints (atomic save, resume past corrupt files), locks on shared datasets / index, clean-up
of what a killed run left, and a corrupt public index.

Kill -9 tests run the real tool in a subprocess that SIGKILLs itself at a named stage
(``ONESHOT_D2_TEST_KILL_AT``, see :mod:`oneshot_d2.data.safe_fs`). Each test's docstring says
which one-line slip in the code it catches.
"""
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from common import MASK_RCNN_QUICK, REPO, TINY, make_cfg
from test_public_datasets import make_medseg, make_ucsd

from oneshot_d2.data import CheckpointError, DatasetError
from oneshot_d2.data.datasets import public_ct, register_cncb_layout
from oneshot_d2.data.datasets.public_ct import (
    prepare_public_datasets,
    public_index_path,
    register_public_datasets,
)
from oneshot_d2.data.io import atomic_write_json
from oneshot_d2.data.phantom_dataset import (
    MARKER_FILE,
    SPEC_FILE,
    PhantomSpec,
    phantom_incomplete_reason,
    phantom_is_complete,
    prepare_phantom_dataset,
    read_phantom_marker,
    write_phantom_dataset,
)
from oneshot_d2.data.safe_fs import (
    KILL_ENV,
    clean_orphans,
    file_lock,
    host_tag,
    parse_sibling,
    sibling_name,
    tmp_prefix,
)
from oneshot_d2.engine import OneShotTrainer
from oneshot_d2.engine.checkpoint import AtomicCheckpointer

PREPARE_PHANTOM = os.path.join(REPO, "datasets", "prepare_phantom.py")
TINY_PHANTOM = dict(size=64, seg_train=4, seg_test=2, cls_train=3, cls_val=3, cls_test=3,
                    slices_per_patient=2)
TINY_ARGS = ["--size", "64", "--seg-train", "4", "--seg-test", "2", "--cls-train", "3",
             "--cls-val", "3", "--cls-test", "3", "--slices-per-patient", "2"]


# ---------------------------------------------------------------------------------------------
# helpers
def _run(args, tmp_path, kill_at=None, timeout=120):
    """Run ``python <args>`` offline on one thread, with an empty dataset root."""
    env = dict(os.environ, OMP_NUM_THREADS="1", DETECTRON2_DATASETS=str(tmp_path / "d2_empty"))
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(tmp_path))


def _snapshot(folder):
    """{relative path: (bytes, mtime_ns)} of every file under ``folder``."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return out


def _seed(root):
    return read_phantom_marker(root)["spec"]["seed"]


@contextlib.contextmanager
def _captured(name="oneshot_d2"):
    """WARNING+ messages of logger ``name`` (works although Detectron2's ``setup_logger``
    stops the project's logger from propagating to pytest's ``caplog``)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _linear(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


# ---------------------------------------------------------------------------------------------
# prepare_phantom --overwrite
def test_overwrite_refuses_foreign_folder(tmp_path):
    """Catches: --overwrite deleting a folder without the marker (the lost CNCB images), or
    failing with exit 0 / a traceback instead of one line and exit code 2."""
    foreign = tmp_path / "cncb"
    (foreign / "imgs").mkdir(parents=True)
    (foreign / "imgs" / "1_000.jpg").write_bytes(b"\xff\xd8 user image")
    (foreign / "notes.txt").write_text("mine")
    before = _snapshot(foreign)
    r = _run([PREPARE_PHANTOM, "--root", str(foreign), "--overwrite", *TINY_ARGS], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "refusing to overwrite" in line]
    assert len(errors) == 1 and str(foreign) in errors[0] and MARKER_FILE in errors[0]
    assert _snapshot(foreign) == before
    assert [n for n in os.listdir(tmp_path) if n.startswith("cncb")] == ["cncb"]  # no tmp/lock


@pytest.mark.parametrize("kind", ["file", "legacy_without_counts"])
def test_overwrite_refuses_other_foreign_roots(tmp_path, kind):
    """Catches: ownership judged by the folder name or by any phantom.json (a file that is not
    a set this tool wrote)."""
    root = tmp_path / "p"
    if kind == "file":
        root.write_text("a file")
    else:
        root.mkdir()
        (root / SPEC_FILE).write_text(json.dumps({"something": "else"}))
    before = root.read_bytes() if kind == "file" else _snapshot(root)
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        write_phantom_dataset(str(root), PhantomSpec(**TINY_PHANTOM), overwrite=True)
    assert (root.read_bytes() if kind == "file" else _snapshot(root)) == before
    assert os.listdir(tmp_path) == ["p"]


def test_overwrite_replaces_own_set(tmp_path):
    """Catches: the swap leaving the old set (or a .old / .tmp folder) behind, the marker not
    written, or a set written by this tool (marked, or an older one with only phantom.json)
    refused."""
    root = str(tmp_path / "p")
    write_phantom_dataset(root, PhantomSpec(seed=1, **TINY_PHANTOM))
    assert phantom_is_complete(root) and _seed(root) == 1
    written, counts = prepare_phantom_dataset(root, PhantomSpec(seed=2, **TINY_PHANTOM),
                                              overwrite=True)
    assert written and _seed(root) == 2 and phantom_is_complete(root)
    assert counts == read_phantom_marker(root)["counts"]
    assert os.listdir(tmp_path) == ["p"]
    os.unlink(os.path.join(root, MARKER_FILE))  # a set written before markers existed
    assert phantom_is_complete(root)
    written, _ = prepare_phantom_dataset(root, PhantomSpec(seed=3, **TINY_PHANTOM),
                                         overwrite=True)
    assert written and _seed(root) == 3 and os.path.isfile(os.path.join(root, MARKER_FILE))


def _annotation_bytes(root):
    """{relative path: bytes} of the COCO annotation files of the set in ``root``."""
    folder = os.path.join(root, "annotations")
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


def test_missing_annotations_are_written_again(tmp_path):
    """A complete set whose annotations/ was deleted. Catches: a missing annotation file
    counted as an incomplete set (prepare_phantom then refuses the set: "not a complete phantom
    dataset ... annotation file missing; pass overwrite=True"), the annotations not written
    again, or written differently from the lost ones (not byte-identical: another min_area,
    another description)."""
    root = str(tmp_path / "p")
    write_phantom_dataset(root, PhantomSpec(**TINY_PHANTOM))
    originals = _annotation_bytes(root)
    assert sorted(originals) == ["seg_test_merge.json", "seg_test_separate.json",
                                 "seg_train_merge.json", "seg_train_separate.json"]
    marker = (tmp_path / "p" / MARKER_FILE).read_bytes()
    shutil.rmtree(os.path.join(root, "annotations"))
    assert phantom_incomplete_reason(root) is None
    written, counts = prepare_phantom_dataset(root, PhantomSpec(**TINY_PHANTOM))
    assert not written and counts == read_phantom_marker(root)["counts"]
    assert _annotation_bytes(root) == originals
    assert (tmp_path / "p" / MARKER_FILE).read_bytes() == marker
    os.unlink(os.path.join(root, "annotations", "seg_test_separate.json"))  # one file only
    prepare_phantom_dataset(root, PhantomSpec(**TINY_PHANTOM), min_area=5)  # the set's own 100
    assert _annotation_bytes(root) == originals
    assert os.listdir(tmp_path) == ["p"]  # no temporary file or lock left


def test_same_seed_gives_identical_files_anywhere(tmp_path):
    """Two runs of one seed into different folders. Catches: the temporary folder's path
    (``<root>.tmp-<host>-<pid>-<random>``) or the final root written into a file (the COCO
    ``info.description`` named the absolute split file), so runs of one seed differed."""
    roots = [str(tmp_path / "a" / "p"), str(tmp_path / "b" / "q")]
    for root in roots:
        write_phantom_dataset(root, PhantomSpec(seed=4, **TINY_PHANTOM))
    first, second = _annotation_bytes(roots[0]), _annotation_bytes(roots[1])
    assert first == second
    for root in roots:
        for name in (SPEC_FILE, MARKER_FILE):
            with open(os.path.join(root, name), encoding="utf-8") as f:
                assert str(tmp_path) not in f.read()
    for name, data in first.items():
        text = data.decode("utf-8")
        assert ".tmp-" not in text and str(tmp_path) not in text, name
        description = json.loads(text)["info"]["description"]
        assert "segmentation/" in description and not os.path.isabs(description.split()[-2])


def test_half_deleted_set_is_not_complete(tmp_path):
    """Catches: phantom_is_complete trusting the marker alone (the issue's 99 of 240 slices
    accepted as "already holds a phantom dataset")."""
    root = tmp_path / "p"
    write_phantom_dataset(str(root), PhantomSpec(**TINY_PHANTOM))
    imgs = root / "segmentation" / "imgs"
    for name in sorted(os.listdir(imgs))[:2]:
        os.unlink(imgs / name)
    reason = phantom_incomplete_reason(str(root))
    assert reason and str(imgs) in reason and "missing" in reason
    with pytest.raises(FileExistsError, match="not a complete phantom dataset"):
        prepare_phantom_dataset(str(root), PhantomSpec(**TINY_PHANTOM))
    written, _ = prepare_phantom_dataset(str(root), PhantomSpec(**TINY_PHANTOM), overwrite=True)
    assert written and phantom_is_complete(str(root))


# stage -> (root present right after the kill, kinds of folders left beside it, seed the next
# run finds)
KILL_STAGES = {"phantom-writing": (True, {"tmp"}, 1), "phantom-swap": (False, {"tmp", "old"}, 2),
               "phantom-delete-old": (True, {"old"}, 2)}


@pytest.mark.parametrize("stage", sorted(KILL_STAGES))
def test_kill_during_overwrite_leaves_a_complete_set(tmp_path, stage):
    """kill -9 of ``prepare_phantom --overwrite`` while the new set is half written, between the
    two renames of the swap, and before the old set is deleted. Catches: deleting the old set
    before the new one is complete (old code: rmtree, then rename), the next run not putting
    back a set left aside by a kill between the renames (it would write seed 3), and the next
    run not removing the orphaned .tmp / .old folders."""
    root = tmp_path / "p"
    write_phantom_dataset(str(root), PhantomSpec(seed=1, **TINY_PHANTOM))
    r = _run([PREPARE_PHANTOM, "--root", str(root), "--overwrite", "--seed", "2", *TINY_ARGS],
             tmp_path, kill_at=stage)
    assert r.returncode == -signal.SIGKILL, r.stderr
    present, kinds, seed = KILL_STAGES[stage]
    assert root.exists() == present
    if present:
        assert phantom_is_complete(str(root)) and _seed(str(root)) == seed
    leftovers = {parse_sibling(n)[1]: str(tmp_path / n) for n in os.listdir(tmp_path)
                 if parse_sibling(n)}
    assert set(leftovers) == kinds
    if "old" in leftovers:  # the old set is moved aside whole, deleted only at the end
        assert phantom_is_complete(leftovers["old"]) and _seed(leftovers["old"]) == 1
    with _captured() as warnings:
        written, _ = prepare_phantom_dataset(str(root), PhantomSpec(seed=3, **TINY_PHANTOM))
    assert not written and phantom_is_complete(str(root)) and _seed(str(root)) == seed
    assert [n for n in os.listdir(tmp_path) if n.startswith("p")] == ["p"]
    assert any("left by an interrupted run" in w for w in warnings)


def test_two_phantom_writers_take_turns(tmp_path):
    """Two prepare_phantom runs on one root at once. Catches: no lock (both build a set, the
    second rename fails on the now non-empty root or replaces the first)."""
    root, results, errors = str(tmp_path / "p"), [], []

    def prepare(seed):
        try:
            results.append(prepare_phantom_dataset(root, PhantomSpec(seed=seed, **TINY_PHANTOM)))
        except Exception as e:  # noqa: BLE001  reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=prepare, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(written for written, _ in results) == [False, True]
    assert phantom_is_complete(root) and os.listdir(tmp_path) == ["p"]


# ---------------------------------------------------------------------------------------------
# temporary names, orphans, locks
def _dead_pid():
    """The id of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def _other_host_tag():
    """A host tag that is not this host's."""
    return "0" * 8 if host_tag() != "0" * 8 else "1" * 8


def test_temporary_names_carry_host_and_pid(tmp_path):
    """Catches: a temporary / moved-aside name without the host (a pid judged on the wrong
    machine), or one that parse_sibling cannot read back (then never cleaned up)."""
    here = host_tag()
    assert len(here) == 8 and int(here, 16) >= 0
    for name in (tmp_prefix("a.json") + "k3_x9z", os.path.basename(sibling_name("p.d", "old")),
                 os.path.basename(sibling_name("my-data.v2", "tmp"))):
        parsed = parse_sibling(name)
        assert parsed is not None and parsed.host == here and parsed.pid == os.getpid(), name
    assert parse_sibling(os.path.basename(sibling_name("my-data.v2", "tmp"))).base == "my-data.v2"


def test_clean_orphans_only_removes_dead_writers_files(tmp_path):
    """Catches: removing a live process's temporary file, a file written on another host /
    PID namespace (its pid says nothing here: on a shared file system it may be a live
    writer's), another tool's / base's files, or a user's file that merely contains ".tmp"."""
    dead_pid, here, other = _dead_pid(), host_tag(), _other_host_tag()
    names = {f"x.tmp-{here}-{dead_pid}-ab12": True, f"x.old-{here}-{dead_pid}-ab12": True,
             f"x.tmp-{here}-{os.getpid()}-ab12": False, f"y.tmp-{here}-{dead_pid}-ab12": False,
             f"x.tmp-{other}-{dead_pid}-ab12": False, f"x.old-{other}-{dead_pid}-ab12": False,
             f"x.tmp-{dead_pid}-ab12": False, f"x.tmp-{here}-notapid-ab12": False,
             "x.tmp": False, "x": False}
    for name in names:
        (tmp_path / name).mkdir()
    infos = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: infos.append((record.levelno, record.getMessage()))
    logger = logging.getLogger("oneshot_d2.data.safe_fs")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        removed = clean_orphans(str(tmp_path), bases=["x"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert sorted(os.path.basename(p) for p in removed) == sorted(
        n for n, gone in names.items() if gone)
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, gone in names.items() if not gone)
    left = [m for lvl, m in infos if lvl == logging.INFO and "another host" in m]
    assert len(left) == 2 and all(other in m for m in left)


def test_atomic_write_removes_its_dead_temporary_files(tmp_path):
    """Catches: atomic writes never cleaning up the temporary files of a killed writer of the
    same file (or cleaning those of a live one, or of a writer on another host)."""
    here = host_tag()
    dead, live = f"a.json.tmp-{here}-{_dead_pid()}-ab12", f"a.json.tmp-{here}-{os.getpid()}-ab12"
    foreign = f"a.json.tmp-{_other_host_tag()}-{_dead_pid()}-ab12"
    for name in (dead, live, foreign):
        (tmp_path / name).write_text("{")
    atomic_write_json(str(tmp_path / "a.json"), {"ok": 1})
    assert sorted(os.listdir(tmp_path)) == sorted(["a.json", live, foreign])
    assert json.loads((tmp_path / "a.json").read_text()) == {"ok": 1}


def test_file_lock_is_exclusive(tmp_path):
    """Catches: a lock that does not exclude a second holder, or a lock file left behind."""
    target = str(tmp_path / "index.json")
    with file_lock(target):
        with pytest.raises(BlockingIOError, match="index.json"):
            with file_lock(target, wait=False):
                pass
    with file_lock(target, wait=False):
        pass
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# checkpoints
CHECKPOINT_SCRIPT = """
import sys, torch
import oneshot_d2  # noqa: F401
from oneshot_d2.engine.checkpoint import AtomicCheckpointer
torch.manual_seed(2)
AtomicCheckpointer(torch.nn.Linear(3, 2), sys.argv[1]).save("model_final", iteration=2)
"""


def test_kill_during_checkpoint_save_keeps_previous_model(tmp_path):
    """kill -9 while model_final.pth is rewritten (e.g. --resume with a larger MAX_ITER).
    Catches: writing the checkpoint in place (the previous model is gone), last_checkpoint
    changed before its file is complete, and the orphaned temporary file never removed."""
    out = tmp_path / "out"
    AtomicCheckpointer(_linear(1), str(out)).save("model_final", iteration=1)
    before = (out / "model_final.pth").read_bytes()
    script = tmp_path / "save.py"
    script.write_text(CHECKPOINT_SCRIPT)
    r = _run([str(script), str(out)], tmp_path, kill_at="checkpoint-write")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (out / "model_final.pth").read_bytes() == before
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert any(".tmp-" in n for n in os.listdir(out))
    model = torch.nn.Linear(3, 2)
    checkpointer = AtomicCheckpointer(model, str(out))  # the next run
    assert sorted(os.listdir(out)) == ["last_checkpoint", "model_final.pth"]
    extra = checkpointer.resume_or_load("", resume=True)
    assert checkpointer.resumed_from == str(out / "model_final.pth") and extra["iteration"] == 1
    assert torch.equal(model.weight, _linear(1).weight)


@pytest.mark.parametrize("last", ["truncated", "empty_tag", "dangling_tag"])
def test_resume_falls_back_to_newest_complete_checkpoint(tmp_path, last):
    """last_checkpoint names a truncated file, is empty, or names a missing file. Catches: the
    resume dying with a bare EOFError / zip error / assertion, falling back silently (no
    WARNING naming the file), or picking an older checkpoint than the newest complete one."""
    out = tmp_path / "out"
    checkpointer = AtomicCheckpointer(_linear(1), str(out))
    checkpointer.save("model_0000001", iteration=1)
    os.utime(out / "model_0000001.pth", (1, 1))  # older than the next one
    AtomicCheckpointer(_linear(3), str(out)).save("model_0000003", iteration=3)
    tag = out / "last_checkpoint"
    if last == "truncated":
        AtomicCheckpointer(_linear(5), str(out)).save("model_final", iteration=5)
        data = (out / "model_final.pth").read_bytes()
        (out / "model_final.pth").write_bytes(data[: len(data) // 2])
    else:
        tag.write_text("" if last == "empty_tag" else "model_gone.pth")
    model = torch.nn.Linear(3, 2)
    resumer = AtomicCheckpointer(model, str(out))
    with _captured() as warnings:
        extra = resumer.resume_or_load("", resume=True)
    assert resumer.resumed_from == str(out / "model_0000003.pth") and extra["iteration"] == 3
    assert torch.equal(model.weight, _linear(3).weight)
    named = {"truncated": str(out / "model_final.pth"), "empty_tag": str(tag),
             "dangling_tag": "model_gone.pth"}[last]
    assert any(named in w for w in warnings), warnings


def test_checkpointer_cleans_up_only_when_it_saves(tmp_path):
    """Catches: a checkpointer that does not save (save_to_disk=False, e.g. --eval-only's, or a
    non-main process's) removing the temporary files in OUTPUT_DIR, where a saving process may
    be writing; or the saving one not removing a dead writer's file / removing another
    host's."""
    out = tmp_path / "out"
    out.mkdir()
    dead = f"model_final.pth.tmp-{host_tag()}-{_dead_pid()}-ab12"
    foreign = f"model_final.pth.tmp-{_other_host_tag()}-{_dead_pid()}-ab12"
    for name in (dead, foreign):
        (out / name).write_bytes(b"PK\x03\x04 partial")
    AtomicCheckpointer(torch.nn.Linear(3, 2), str(out), save_to_disk=False)
    assert sorted(os.listdir(out)) == sorted([dead, foreign])
    AtomicCheckpointer(torch.nn.Linear(3, 2), str(out), save_to_disk=True)
    assert os.listdir(out) == [foreign]


def test_resume_without_complete_checkpoint_refuses(tmp_path):
    """Every checkpoint in OUTPUT_DIR was cut short. Catches: the resume silently starting from
    MODEL.WEIGHTS at iteration 0 in the same folder (it would train over the checkpoints and
    hide the failure) instead of a CheckpointError naming the folder and the files."""
    weights = tmp_path / "init.pth"
    torch.save({"model": _linear(7).state_dict()}, weights)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"")
    (out / "last_checkpoint").write_text("model_final.pth")
    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match=r"no complete checkpoint.*model_final\.pth"):
        AtomicCheckpointer(model, str(out)).resume_or_load(str(weights), resume=True)
    assert not torch.equal(model.weight, _linear(7).weight)


def test_resume_refuses_a_complete_but_unreadable_checkpoint(tmp_path):
    """last_checkpoint names a complete file that is not a checkpoint (not an interrupted
    write). Catches: stepping past it to an older checkpoint (the resume would silently go
    back in training) instead of raising a CheckpointError that names it."""
    out = tmp_path / "out"
    AtomicCheckpointer(_linear(1), str(out)).save("model_0000001", iteration=1)
    (out / "model_final.pth").write_bytes(b"hello world\n" * 10)
    (out / "last_checkpoint").write_text("model_final.pth")
    with pytest.raises(CheckpointError, match="model_final.pth: not a PyTorch checkpoint"):
        AtomicCheckpointer(torch.nn.Linear(3, 2), str(out)).resume_or_load("", resume=True)


def test_evaluation_resume_never_falls_back(tmp_path):
    """--eval-only --resume (fallback=False) with a truncated file named by last_checkpoint.
    Catches: evaluating an older checkpoint than the one named (with only a warning)."""
    out = tmp_path / "out"
    AtomicCheckpointer(_linear(1), str(out)).save("model_0000001", iteration=1)
    AtomicCheckpointer(_linear(5), str(out)).save("model_final", iteration=5)
    data = (out / "model_final.pth").read_bytes()
    (out / "model_final.pth").write_bytes(data[: len(data) // 2])
    checkpointer = AtomicCheckpointer(torch.nn.Linear(3, 2), str(out), save_to_disk=False)
    with pytest.raises(CheckpointError, match="model_final.pth: truncated"):
        checkpointer.resume_or_load("", resume=True, fallback=False)


def test_missing_keys_are_recorded(tmp_path):
    """Catches: AtomicCheckpointer.missing_keys not listing the parameters a file lacks, on
    which --eval-only's refusal of partial models rests (test_bad_input checks the CLI)."""
    path = tmp_path / "partial.pth"
    torch.save({"model": {"0.weight": _linear(1).weight.detach()}}, path)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    checkpointer = AtomicCheckpointer(model)
    checkpointer.resume_or_load(str(path), resume=False)
    assert checkpointer.missing_keys == ["0.bias"]
    torch.save({"model": model.state_dict()}, path)
    checkpointer.resume_or_load(str(path), resume=False)
    assert checkpointer.missing_keys == []


@pytest.mark.parametrize("content, problem", [
    (None, "not found"), (b"", "empty checkpoint file"),
    ("half", "truncated or corrupt"), (b"hello world\n", "not a PyTorch checkpoint")])
def test_explicit_bad_weights_raise_checkpoint_error(tmp_path, content, problem):
    """An explicitly given MODEL.WEIGHTS that is missing / empty / truncated / not a
    checkpoint. Catches: a raw assertion or torch error (misleading weights_only message)
    instead of a CheckpointError (a ValueError) naming the file and the problem."""
    path = tmp_path / "weights.pth"
    if content == "half":
        torch.save({"model": _linear(1).state_dict()}, path)
        content = path.read_bytes()[:100]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=problem) as info:
        AtomicCheckpointer(torch.nn.Linear(3, 2)).resume_or_load(str(path), resume=False)
    assert isinstance(info.value, ValueError) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_trainer_saves_atomically_and_resumes_past_corrupt_file(phantom_root, tmp_path):
    """OneShotTrainer end to end (no training step). Catches: DefaultTrainer's in-place
    DetectionCheckpointer still used by the trainer or by its PeriodicCheckpointer hook (the
    hook keeps the checkpointer it was built with), and start_iter not taken from the
    checkpoint actually resumed from (e.g. from ``has_checkpoint()``: iteration 1 after a
    fallback to MODEL.WEIGHTS), and a folder of only broken checkpoints not refused."""
    register_cncb_layout(phantom_root, "safety")
    cfg = make_cfg(MASK_RCNN_QUICK, *TINY, "DATASETS.TRAIN", "('safety_seg_train',)",
                   "DATASETS.TEST", "('safety_seg_test',)", "OUTPUT_DIR", str(tmp_path),
                   "SOLVER.MAX_ITER", "10")
    trainer = OneShotTrainer(cfg)
    checkpointers = [h.checkpointer for h in trainer._hooks if hasattr(h, "checkpointer")]
    assert isinstance(trainer.checkpointer, AtomicCheckpointer)
    assert checkpointers and all(c is trainer.checkpointer for c in checkpointers)
    trainer.iter = 4
    trainer.checkpointer.save("model_0000004")
    (tmp_path / "model_final.pth").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    resumed = OneShotTrainer(cfg)
    with _captured() as warnings:
        resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 5
    assert any(str(tmp_path / "model_final.pth") in w for w in warnings)
    (tmp_path / "model_0000004.pth").write_bytes(b"")  # nothing complete left: refused
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        OneShotTrainer(cfg).resume_or_load(resume=True)
    os.remove(tmp_path / "model_0000004.pth")  # no checkpoint at all: MODEL.WEIGHTS, iter 0
    os.remove(tmp_path / "model_final.pth")
    fresh = OneShotTrainer(cfg)
    fresh.resume_or_load(resume=True)
    assert fresh.start_iter == 0


# ---------------------------------------------------------------------------------------------
# the public index
def test_concurrent_index_writers_keep_both_entries(tmp_path, monkeypatch):
    """prepare_public --medseg and --ucsd into the same --out at once (index read slowed down
    to make them overlap). Catches: reading index.json outside the lock (the last writer
    wins and the other's entries are lost)."""
    make_medseg(str(tmp_path / "medseg"))
    make_ucsd(str(tmp_path / "ucsd"))
    out = str(tmp_path / "d2")
    read = public_ct._index_for_update

    def slow_read(index_file):
        index = read(index_file)
        time.sleep(0.3)
        return index

    monkeypatch.setattr(public_ct, "_index_for_update", slow_read)
    errors = []

    def prepare(**sources):
        try:
            prepare_public_datasets(out, **sources)
        except Exception as e:  # noqa: BLE001  reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=prepare, kwargs={"medseg": str(tmp_path / "medseg")}),
               threading.Thread(target=prepare, kwargs={"ucsd": str(tmp_path / "ucsd")})]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with open(public_index_path(out)) as f:
        index = json.load(f)
    assert {"medseg_seg_train", "medseg_seg_sep_test", "ucsd_cls_train", "ucsd_cls_val"} <= set(
        index)
    assert not [n for n in os.listdir(os.path.join(out, "public")) if ".tmp-" in n or
                n.endswith(".lock")]


def test_corrupt_index_does_not_break_import(tmp_path):
    """Catches: register_public_datasets raising at `import oneshot_d2` (every entry point,
    including the tool that would rewrite the index, dead) or skipping it without a word."""
    public = tmp_path / "d2_empty" / "public"
    public.mkdir(parents=True)
    (public / "index.json").write_text('{"medseg_seg_train": {"type": "seg", ')
    r = _run(["-c", "import oneshot_d2"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert any("index.json" in line and "not registered" in line
               for line in r.stderr.splitlines()), r.stderr


def test_corrupt_index_is_rewritten_and_kept_aside(tmp_path, unique_name):
    """Catches: prepare_public dying on the corrupt index it should replace, deleting it
    instead of keeping it aside, or a bad entry making non-strict registration fail."""
    make_ucsd(str(tmp_path / "ucsd"))
    out = str(tmp_path / "d2")
    index_file = public_index_path(out)
    os.makedirs(os.path.dirname(index_file))
    with open(index_file, "w") as f:
        f.write("[1, 2")
    with _captured() as warnings:
        index = prepare_public_datasets(out, ucsd=str(tmp_path / "ucsd"))
    assert set(index) == {"ucsd_cls_train", "ucsd_cls_val"}
    aside = [n for n in os.listdir(os.path.dirname(index_file)) if ".corrupt-" in n]
    assert len(aside) == 1 and any(aside[0] in w for w in warnings)
    renamed = {f"{unique_name}_{k}": v for k, v in index.items()}
    renamed[f"{unique_name}_bad"] = {"type": "volume"}
    with open(index_file, "w") as f:
        json.dump(renamed, f)
    with pytest.raises(DatasetError, match="unknown type"):
        register_public_datasets(out)
    with _captured() as warnings:
        names = register_public_datasets(out, strict=False, replace=True)
    assert sorted(names) == sorted(k for k in renamed if not k.endswith("_bad"))
    assert any(f"{unique_name}_bad" in w for w in warnings)
