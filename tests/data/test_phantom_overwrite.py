"""``prepare_phantom --overwrite`` never loses data: the marker, the atomic swap of the old and the
new set, and what a kill -9 at each stage leaves (the real tool in a subprocess that SIGKILLs
itself at a named stage, ``ONESHOT_D2_TEST_KILL_AT``: :mod:`oneshot_d2.utils.testing`). Each
test's docstring says which one-line slip in the code it catches."""
import json
import os
import shutil
import signal
import threading

import pytest

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
from oneshot_d2.errors import DatasetError
from oneshot_d2.utils.temp_names import (
    parse_sibling,
)
from tests.bad_input import run_tool
from tests.common import (
    PREPARE_PHANTOM,
    TINY_PHANTOM,
    TINY_PHANTOM_ARGS,
    captured_warnings,
    run_forked,
)


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


def test_overwrite_refuses_foreign_folder(tmp_path):
    """Catches: --overwrite deleting a folder without the marker (the lost CNCB images), or
    failing with exit 0 / a traceback instead of one line and exit code 2."""
    foreign = tmp_path / "cncb"
    (foreign / "imgs").mkdir(parents=True)
    (foreign / "imgs" / "1_000.jpg").write_bytes(b"\xff\xd8 user image")
    (foreign / "notes.txt").write_text("mine")
    before = _snapshot(foreign)
    status, lines = run_tool(PREPARE_PHANTOM, "--root", str(foreign), "--overwrite",
                             *TINY_PHANTOM_ARGS)
    assert status == 2, lines
    assert not any("Traceback" in line for line in lines)
    errors = [line for line in lines if "refusing to overwrite" in line]
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


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(KILL_STAGES))
def test_kill_during_overwrite_leaves_a_complete_set(tmp_path, stage):
    """kill -9 of ``prepare_phantom --overwrite`` while the new set is half written, between the
    two renames of the swap, and before the old set is deleted. Catches: deleting the old set
    before the new one is complete (old code: rmtree, then rename), the next run not putting
    back a set left aside by a kill between the renames (it would write seed 3), and the next
    run not removing the orphaned .tmp / .old folders."""
    root = tmp_path / "p"
    write_phantom_dataset(str(root), PhantomSpec(seed=1, **TINY_PHANTOM))
    status = run_forked(lambda: run_tool(PREPARE_PHANTOM, "--root", str(root), "--overwrite",
                                         "--seed", "2", *TINY_PHANTOM_ARGS), tmp_path,
                        kill_at=stage)
    assert status == -signal.SIGKILL
    present, kinds, seed = KILL_STAGES[stage]
    assert root.exists() == present
    if present:
        assert phantom_is_complete(str(root)) and _seed(str(root)) == seed
    leftovers = {parse_sibling(n)[1]: str(tmp_path / n) for n in os.listdir(tmp_path)
                 if parse_sibling(n)}
    assert set(leftovers) == kinds
    if "old" in leftovers:  # the old set is moved aside whole, deleted only at the end
        assert phantom_is_complete(leftovers["old"]) and _seed(leftovers["old"]) == 1
    with captured_warnings() as warnings:
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
