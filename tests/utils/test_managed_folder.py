"""Folders a tool owns and replaces whole (oneshot_d2.utils.managed_folder). Each test names the
slip it catches."""
import os

import pytest

from oneshot_d2.utils.managed_folder import foreign_entry, new_folder_version


def _ours(folder):
    return os.path.isfile(os.path.join(folder, "MARKER"))


def test_foreign_entry_cases(tmp_path):
    # catches: a non-empty folder of another tool taken as replaceable, an empty folder or one of
    # ours refused, a link to one of our folders refused (it is replaced, its target kept), or a
    # link to an empty folder taken as an empty folder (its target is not ours to keep empty)
    ours, foreign, empty = tmp_path / "ours", tmp_path / "foreign", tmp_path / "empty"
    for d in (ours, foreign, empty):
        d.mkdir()
    (ours / "MARKER").write_text("")
    (foreign / "notes.txt").write_text("keep")
    (tmp_path / "file").write_text("x")
    for name, target in (("to_ours", ours), ("to_foreign", foreign), ("to_empty", empty)):
        os.symlink(target, tmp_path / name)
    assert foreign_entry(str(tmp_path / "absent"), _ours) is None
    assert foreign_entry(str(empty), _ours) is None
    assert foreign_entry(str(ours), _ours) is None
    assert foreign_entry(str(tmp_path / "to_ours"), _ours) is None
    assert foreign_entry(str(foreign), _ours) == "folder"
    assert foreign_entry(str(tmp_path / "file"), _ours) == "file"
    assert foreign_entry(str(tmp_path / "to_foreign"), _ours) == "symbolic link"
    assert foreign_entry(str(tmp_path / "to_empty"), _ours) == "symbolic link"


def test_new_folder_version_swaps_in_or_leaves_the_old(tmp_path):
    # catches: the temporary folder left behind after an error, the old version touched when
    # the new one fails, or a link replaced by deleting its target's contents
    target = tmp_path / "target"
    target.mkdir()
    (target / "MARKER").write_text("old")
    os.symlink(target, tmp_path / "link")
    with pytest.raises(RuntimeError):
        with new_folder_version(str(tmp_path / "link")) as tmp:
            assert os.path.isdir(tmp)
            raise RuntimeError("interrupted")
    assert sorted(os.listdir(tmp_path)) == ["link", "target"]
    with new_folder_version(str(tmp_path / "link")) as tmp:
        with open(os.path.join(tmp, "MARKER"), "w") as f:
            f.write("new")
    assert not os.path.islink(tmp_path / "link")
    assert (tmp_path / "link" / "MARKER").read_text() == "new"
    assert (target / "MARKER").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["link", "target"]
