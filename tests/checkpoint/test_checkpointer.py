"""Checkpoints are never lost: atomic saves (a kill -9 while saving keeps the previous model),
resume past corrupt files, and clear errors for bad weights. Each test's docstring says which
one-line slip in the code it catches."""
import os
import signal

import pytest
import torch

from oneshot_d2.checkpoint import AtomicCheckpointer
from oneshot_d2.data.datasets import register_cncb_layout
from oneshot_d2.engine import OneShotTrainer
from oneshot_d2.errors import CheckpointError
from oneshot_d2.utils.temp_names import (
    host_tag,
)
from tests.common import (
    MASK_RCNN_QUICK,
    TINY,
    captured_warnings,
    dead_pid,
    make_cfg,
    other_host_tag,
    run_forked,
)


def _linear(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)




@pytest.mark.slow
def test_kill_during_checkpoint_save_keeps_previous_model(tmp_path):
    """kill -9 while model_final.pth is rewritten (e.g. --resume with a larger MAX_ITER).
    Catches: writing the checkpoint in place (the previous model is gone), last_checkpoint
    changed before its file is complete, and the orphaned temporary file never removed."""
    out = tmp_path / "out"
    AtomicCheckpointer(_linear(1), str(out)).save("model_final", iteration=1)
    before = (out / "model_final.pth").read_bytes()
    status = run_forked(lambda: AtomicCheckpointer(_linear(2), str(out)).save(
        "model_final", iteration=2), tmp_path, kill_at="checkpoint-write")
    assert status == -signal.SIGKILL
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
    with captured_warnings() as warnings:
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
    dead = f"model_final.pth.tmp-{host_tag()}-{dead_pid()}-ab12"
    foreign = f"model_final.pth.tmp-{other_host_tag()}-{dead_pid()}-ab12"
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
    with captured_warnings() as warnings:
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
