"""Every shipped config family builds and runs one training step and one inference pass on the
small phantom; multi-process training with a delayed image loss; what is saved is what was
evaluated."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.utils.events import EventStorage

from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.engine import OneShotTrainer, main, setup
from oneshot_d2.engine.hooks import SEG_LOSS_KEYS
from tests.common import (
    AFFINITY_QUICK,
    LSTM_QUICK,
    REPO,
    SMALL_HEADS,
    TINY,
    config_path,
    dataset_opts,
    make_cfg,
    train_args,
)

pytestmark = pytest.mark.slow


FAMILIES = {
    "affinity_quick": (AFFINITY_QUICK, False),
    "lstm_quick": (LSTM_QUICK, False),
    "affinity_R50_paper": (config_path("covid/oneshot_affinity_R_50_FPN_A64_100ep_cncb.yaml"),
                           False),
    "lstm_X101_paper": (config_path("covid/oneshot_lstm_attn_X_101_32x8d_FPN_50ep_cncb.yaml"),
                        True),
    "affinity_R18_faithful": (config_path("covid/oneshot_affinity_R_18_faithful_100ep_cncb.yaml"),
                              False),
    "real_2cls": (config_path("real/oneshot_affinity_R_18_FPN_800iter_real_2cls.yaml"), False),
}
# Offline: no ImageNet download; otherwise the shipped settings (norms, freezing, heads, top-k).
OFFLINE = ("MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "SEED", "3")
# The phantom's 128 px slices at 64 px: one step of the paper's ResNeXt-101 costs a quarter.
SIZE_64 = ("INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
           "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64")


@pytest.fixture(scope="module")
def prefix(phantom_root):
    register_cncb_layout(phantom_root, "fam")
    return "fam"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_config_family_trains_one_step_and_infers(family, prefix):
    config, separate = FAMILIES[family]
    opts = OFFLINE + TINY + SIZE_64 + dataset_opts(prefix, separate)
    cfg = make_cfg(config, *opts)
    if family == "real_2cls":  # 2 image classes: the phantom's 3 would be refused (tested)
        cfg.MODEL.ONESHOT.NUM_IMAGE_CLASSES = 3
    trainer = OneShotTrainer(cfg)  # also runs the training-config checks on the shipped file
    model = trainer.model
    model.image_loss_enabled = True
    batch = next(iter(trainer.data_loader))
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) == set(SEG_LOSS_KEYS) | {"loss_image_cls"}
    total = sum(losses.values())
    assert torch.isfinite(total) and float(losses["loss_image_cls"].detach()) > 0
    total.backward()
    head_grads = [p.grad for p in model.image_head.parameters()]
    assert all(g is not None for g in head_grads) and any(g.abs().sum() > 0 for g in head_grads)
    model.eval()
    with torch.no_grad():
        out = model([batch[-1]])[0]
    assert out["image_cls"].shape == (cfg.MODEL.ONESHOT.NUM_IMAGE_CLASSES,)
    assert out["image_cls_boxes"].shape == (cfg.MODEL.ONESHOT.ROI_BATCH_SIZE, 4)


def test_image_head_untouched_before_the_start_iteration(prefix, tmp_path):
    """Before LOSS_START_ITER the head gets zero gradients (for DDP) that are dropped before the
    optimizer step: no Adam step, no weight decay, parameters unchanged."""
    args = train_args(AFFINITY_QUICK, tmp_path, *TINY, *dataset_opts(prefix), "SEED", "3",
                      "SOLVER.MAX_ITER", "2", "MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER", "5",
                      "DATASETS.TEST", "()", "TEST.PRECISE_BN.ENABLED", "False")
    trainer = OneShotTrainer(setup(args))
    before = {k: v.clone() for k, v in trainer.model.image_head.named_parameters()}
    trainer.train()
    after = dict(trainer.model.image_head.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(id(p) not in trainer.optimizer.state for p in after.values())


def test_saved_model_is_the_evaluated_model(prefix, tmp_path):
    """A copy at the last iteration (COPY.MODE period) lands before PreciseBN, the checkpoint
    and the evaluation: --eval-only of model_final.pth reproduces the final evaluation."""
    opts = (*TINY, *SMALL_HEADS, *dataset_opts(prefix), "SEED", "3", "SOLVER.MAX_ITER", "2",
            "MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER", "1", "TEST.PRECISE_BN.NUM_ITER", "2",
            "MODEL.ONESHOT.COPY.MODE", "period", "MODEL.ONESHOT.COPY.PERIOD", "2")
    trained = main(train_args(AFFINITY_QUICK, tmp_path, *opts))
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    model = ckpt["model"]
    for seg, cls_ in (("box_head", "cls_box_head"), ("mask_head", "cls_mask_head")):
        seg_keys = [k for k in model if k.startswith(f"roi_heads.{seg}.")]
        assert seg_keys and all(torch.equal(model[k], model[k.replace(seg, cls_, 1)])
                                for k in seg_keys)
    assert ckpt["trainer"]["hooks"]["CopyClsBranchesHook"]["last_copy_iter"] == 1
    evaluated = main(train_args(AFFINITY_QUICK, tmp_path, *opts, "MODEL.WEIGHTS",
                                str(tmp_path / "model_final.pth"), eval_only=True))
    np.testing.assert_equal(evaluated, trained)  # exact, nan == nan


def test_resume_restores_copy_hook_state(prefix, tmp_path):
    opts = (*TINY, *SMALL_HEADS, *dataset_opts(prefix), "SEED", "3", "DATASETS.TEST", "()",
            "MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER", "0", "TEST.PRECISE_BN.NUM_ITER", "2")
    main(train_args(AFFINITY_QUICK, tmp_path, *opts, "SOLVER.MAX_ITER", "2"))
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    state = ckpt["trainer"]["hooks"]["CopyClsBranchesHook"]
    # the initial copy, and the first iteration always improves on "best" = inf
    assert state["num_copies"] >= 2 and state["last_copy_iter"] in (0, 1)
    from oneshot_d2.engine.hooks import CopyClsBranchesHook

    args = train_args(AFFINITY_QUICK, tmp_path, *opts, "SOLVER.MAX_ITER", "3", resume=True)
    trainer = OneShotTrainer(setup(args))
    trainer.resume_or_load(resume=True)
    hook = next(h for h in trainer._hooks if isinstance(h, CopyClsBranchesHook))
    assert hook.num_copies == state["num_copies"] and hook.best == state["best"]
    # the restored classification branch equals the saved one (no re-copy on resume)
    saved = {k[len("roi_heads.cls_box_head."):]: v for k, v in ckpt["model"].items()
             if k.startswith("roi_heads.cls_box_head.")}
    current = trainer.model.roi_heads.cls_box_head.state_dict()
    assert saved and all(torch.equal(current[k], v) for k, v in saved.items())


def test_two_process_launch_across_the_image_loss_start(phantom_root, tmp_path):
    """The shipped quick config (BN image head, LOSS_START_ITER > 0) under Detectron2's
    `launch` with 2 processes, here on two "machines" (`--num-machines 2 --machine-rank 0/1
    --dist-url tcp://..`: two OS processes of one training process each, meeting over TCP; one
    machine's `--num-gpus 2` differs only in how Detectron2 starts the processes): no DDP
    'unused parameters' error across the start iteration, and identical parameters and buffers
    (BN runs as naiveSyncBN) on both replicas afterwards."""
    opts = (*TINY, *SMALL_HEADS, *dataset_opts("launch"), "SEED", "3", "DATASETS.TEST", "()",
            "SOLVER.MAX_ITER", "2", "TEST.PRECISE_BN.NUM_ITER", "2",
            "MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER", "1")
    assert make_cfg(AFFINITY_QUICK).MODEL.ONESHOT.IMAGE_HEAD.NORM == "BN"
    machines_file = str(tmp_path / "machines")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = [subprocess.Popen(
        [sys.executable, "-c", "from tests.engine.launch_worker import machine_main; "
         "machine_main()", json.dumps({
             "argv": [AFFINITY_QUICK, str(tmp_path / "machines_out"), *opts],
             "phantom_root": phantom_root, "out_file": machines_file, "machine_rank": rank,
             "num_machines": 2, "dist_url": f"tcp://127.0.0.1:{port}"})],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    try:
        outputs = [r.communicate(timeout=300)[0] for r in runs]
    finally:  # a rank left waiting at the rendezvous must not outlive the test
        for r in runs:
            r.kill()
    assert all(r.returncode == 0 for r in runs), outputs[0][-2000:] + outputs[1][-2000:]
    prints = [open(f"{machines_file}.{r}").read().split() for r in (0, 1)]
    assert prints[0][0] == prints[1][0] == "2"  # one world of two processes
    assert prints[0][2] != prints[1][2]  # two processes
    assert prints[0][1] == prints[1][1]  # parameters
    assert prints[0][3] == prints[1][3]  # buffers (synchronised BN statistics)
    assert prints[0][4] == prints[1][4] == "True"  # the image loss ran after the start
