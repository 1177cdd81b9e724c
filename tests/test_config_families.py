"""A few iterations (then evaluation) of each config family of the one-shot model, on the small
phantom, and a 2-process CPU launch of the one-shot model."""
import os

import pytest
from detectron2.engine import default_argument_parser, launch

from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.engine import main

from conftest import REPO

FAMILIES = {
    "affinity_quick": ("quick_schedules/oneshot_affinity_R_18_FPN_phantom_quick.yaml", "merge"),
    "lstm_quick": ("quick_schedules/oneshot_lstm_attn_R_18_FPN_phantom_quick.yaml", "merge"),
    "affinity_R50_paper": ("covid/oneshot_affinity_R_50_FPN_A64_100ep_cncb.yaml", "merge"),
    "lstm_X101_paper": ("covid/oneshot_lstm_attn_X_101_32x8d_FPN_50ep_cncb.yaml", "separate"),
    "affinity_R18_faithful": ("covid/oneshot_affinity_R_18_faithful_100ep_cncb.yaml", "merge"),
}


def _args(config, out, prefix, mode, max_iter=2):
    seg = f"{prefix}_seg_{'sep_' if mode == 'separate' else ''}"
    opts = [
        "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",
        "DATASETS.TRAIN", f"('{seg}train',)", "DATASETS.TRAIN_CLS", f"('{prefix}_cls_train',)",
        "DATASETS.TEST", f"('{seg}test', '{prefix}_cls_test')",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CLS_IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "1000",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out), "SEED", "3",
        "MODEL.ONESHOT.IMAGE_HEAD.LOSS_START_ITER", "0", "TEST.PRECISE_BN.NUM_ITER", "2",
    ]
    return default_argument_parser().parse_args(
        ["--config-file", os.path.join(REPO, "configs", config)] + opts)


@pytest.fixture(scope="module")
def prefix(phantom_root):
    register_cncb_layout(phantom_root, "fam")
    return "fam"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_config_family_trains_and_evaluates(family, prefix, tmp_path):
    config, mode = FAMILIES[family]
    results = main(_args(config, tmp_path, prefix, mode))
    seg_name = f"fam_seg_{'sep_' if mode == 'separate' else ''}test"
    assert set(results[seg_name]) == {"bbox", "segm", "segm_per_image"}
    cls_res = results["fam_cls_test"]["classification"]
    assert 0.0 <= cls_res["accuracy"] <= 100.0
    assert {"sensitivity/Normal", "sensitivity/CP", "sensitivity/COVID-19", "macro_f1",
            "weighted_f1", "macro_auc"} <= set(cls_res)
    out_dir = tmp_path / "inference" / "fam_cls_test"
    assert (out_dir / "classification_metrics.json").is_file()
    assert (out_dir / "confusion_matrix.png").is_file()


def test_resume_restores_copy_hook_state(prefix, tmp_path):
    import torch

    config, mode = FAMILIES["affinity_quick"]
    main(_args(config, tmp_path, prefix, mode, max_iter=2))
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    state = ckpt["trainer"]["hooks"]["CopyClsBranchesHook"]
    assert state["num_copies"] >= 1  # at least the initial copy

    from oneshot_d2.engine import OneShotTrainer, setup
    from oneshot_d2.engine.hooks import CopyClsBranchesHook

    args = _args(config, tmp_path, prefix, mode, max_iter=3)
    args.resume = True
    trainer = OneShotTrainer(setup(args))
    trainer.resume_or_load(resume=True)
    hook = next(h for h in trainer._hooks if isinstance(h, CopyClsBranchesHook))
    assert hook.num_copies == state["num_copies"] and hook.best == state["best"]
    # the restored classification branch equals the saved one (no re-copy on resume)
    saved = {k[len("roi_heads.cls_box_head."):]: v for k, v in ckpt["model"].items()
             if k.startswith("roi_heads.cls_box_head.")}
    current = trainer.model.roi_heads.cls_box_head.state_dict()
    assert all(torch.equal(current[k], v) for k, v in saved.items())


def test_two_process_cpu_launch_oneshot(phantom_root, prefix, tmp_path):
    """Parameters (incl. the copied classification branch) and, with naiveSyncBN in the image
    head, the BN running statistics too are identical on both ranks."""
    from _launch_worker import train_and_fingerprint

    config, mode = FAMILIES["affinity_quick"]
    args = _args(config, tmp_path, "launch", mode)
    args.opts += ["DATASETS.TEST", "()", "MODEL.ONESHOT.IMAGE_HEAD.NORM", "naiveSyncBN"]
    out_file = str(tmp_path / "fp")
    launch(train_and_fingerprint, 2, dist_url="auto", args=(args, phantom_root, out_file))
    prints = [open(f"{out_file}.{r}").read().split() for r in (0, 1)]
    assert prints[0][0] == prints[1][0] == "2"
    assert prints[0][1] == prints[1][1]  # parameters
    assert prints[0][3] == prints[1][3]  # buffers (synchronised BN statistics)
