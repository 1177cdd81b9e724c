"""tools/train_net's main(): a few iterations, checkpoint + resume (optimizer state included),
eval-only (the launch tests are in test_config_families.py)."""
import os

import pytest
import torch
from detectron2.engine import default_argument_parser

from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.engine import OneShotTrainer, main, setup
from tests.common import REPO

QUICK = os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_R_18_FPN_phantom_quick.yaml")


def _args(out_dir, prefix, *extra, max_iter=2, eval_only=False, resume=False, opts=()):
    argv = ["--config-file", QUICK] + (["--eval-only"] if eval_only else []) + (
        ["--resume"] if resume else [])
    opts = [
        "DATASETS.TRAIN", f"('{prefix}_seg_train',)", "DATASETS.TEST", f"('{prefix}_seg_test',)",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter), "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.STEPS", "()", "DATALOADER.NUM_WORKERS", "0",
        "TEST.DETECTIONS_PER_IMAGE", "20", "OUTPUT_DIR", str(out_dir), "SEED", "1", *opts,
    ]
    return default_argument_parser().parse_args(argv + opts)


@pytest.fixture(scope="module")
def trained(phantom_root, tmp_path_factory):
    register_cncb_layout(phantom_root, "train")
    out = tmp_path_factory.mktemp("train")
    results = main(_args(out, "train"))
    return out, results


def test_train_evaluates_and_checkpoints(trained):
    out, results = trained
    assert set(results) == {"bbox", "segm", "segm_per_image"} and "AP50" in results["segm"]
    assert os.path.isfile(out / "model_final.pth") and os.path.isfile(out / "last_checkpoint")


def test_checkpoint_loads_weights_only(trained):
    out, _ = trained
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 1
    assert ckpt["trainer"]["_trainer"]["optimizer"]["state"], "optimizer state not saved"


def test_resume_restores_optimizer_and_iteration(trained):
    out, _ = trained
    saved = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    cfg = setup(_args(out, "train", max_iter=4, resume=True))
    trainer = OneShotTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    state = trainer.optimizer.state_dict()["state"]
    saved_state = saved["trainer"]["_trainer"]["optimizer"]["state"]
    assert state.keys() == saved_state.keys()
    for k in state:
        assert torch.equal(state[k]["momentum_buffer"], saved_state[k]["momentum_buffer"])
    trainer.train()
    assert trainer.iter == 4  # v0.6 leaves iter at max_iter after the loop


def test_eval_only(trained):
    out, _ = trained
    res = main(_args(out, "train", eval_only=True,
                     opts=("MODEL.WEIGHTS", str(out / "model_final.pth"))))
    assert "segm" in res


@pytest.mark.slow
def test_adam_optimizer(phantom_root, tmp_path):
    register_cncb_layout(phantom_root, "adam")
    cfg = setup(_args(tmp_path, "adam", opts=("SOLVER.OPTIMIZER", "Adam", "SOLVER.BASE_LR",
                                              "1e-5", "SOLVER.WEIGHT_DECAY", "1e-3")))
    trainer = OneShotTrainer(cfg)
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    norm_ids = {id(p) for m in trainer.model.modules()
                if isinstance(m, torch.nn.GroupNorm) for p in m.parameters()}
    for group in trainer.optimizer.param_groups:
        is_norm = {id(p) in norm_ids for p in group["params"]}
        assert len(is_norm) == 1  # Detectron2 keeps norm parameters in groups of their own
        # SOLVER.WEIGHT_DECAY_NORM is 0.0 (Detectron2's default); the rest get 1e-3
        assert group["weight_decay"] == (0.0 if is_norm.pop() else 1e-3)
        assert group["initial_lr"] == 1e-5  # (lr itself starts at the warm-up factor)


def test_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(KeyError, match="not registered"):
        setup(_args(tmp_path, "never_registered"))
