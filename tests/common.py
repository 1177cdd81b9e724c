"""Shared test helpers: paths, configs of the shipped files with offline / tiny overrides, seeded
models and batches (DensePose-style ``tests/common.py``). Fixtures live in ``conftest.py``."""
import atexit
import contextlib
import copy
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_argument_parser

import oneshot_d2  # noqa: F401  isort: skip  (compatibility remedies before Detectron2)
from oneshot_d2 import add_oneshot_config
from oneshot_d2.engine import OneShotTrainer
from oneshot_d2.utils.temp_names import host_tag
from oneshot_d2.utils.testing import KILL_ENV

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")


def config_path(name: str) -> str:
    """``configs/<name>``."""
    return os.path.join(REPO, "configs", name)


AFFINITY_QUICK = config_path("quick_schedules/oneshot_affinity_R_18_FPN_phantom_quick.yaml")
LSTM_QUICK = config_path("quick_schedules/oneshot_lstm_attn_R_18_FPN_phantom_quick.yaml")
MASK_RCNN_QUICK = config_path("quick_schedules/mask_rcnn_R_18_FPN_phantom_quick.yaml")
TRAINING_ACC = config_path(
    "quick_schedules/oneshot_affinity_R_18_FPN_phantom_training_acc_test.yaml")

# 128 px slices, 2 + 2 images, no loader workers, at most 20 lesions a slice: the shipped model
# at test size (a random-weight detector keeps about 100 boxes a slice, and the mask head's
# convolutions on them were most of an inference pass).
TINY = ("INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CLS_IMS_PER_BATCH", "2",
        "DATALOADER.NUM_WORKERS", "0", "TEST.DETECTIONS_PER_IMAGE", "20")

# Narrower one-shot heads for tests of plumbing rather than learning: 32 affinities and 128-channel
# mask features (the image head's width follows), a quarter of the mask branches' convolutions.
SMALL_HEADS = ("MODEL.ONESHOT.IMAGE_HEAD.NUM_AFFINITIES", "32",
               "MODEL.ROI_MASK_HEAD.CONV_DIM", "128")


def dataset_opts(prefix: str, separate: bool = False) -> Tuple[str, ...]:
    """DATASETS.* options for a phantom registered under ``prefix``
    (:func:`oneshot_d2.data.datasets.builtin.register_cncb_layout`)."""
    seg = f"{prefix}_seg_{'sep_' if separate else ''}"
    return ("DATASETS.TRAIN", f"('{seg}train',)", "DATASETS.TRAIN_CLS", f"('{prefix}_cls_train',)",
            "DATASETS.TEST", f"('{seg}test', '{prefix}_cls_test')")


_SCRATCH: List[str] = []


def scratch_output_dir() -> str:
    """A folder of this test process for trainers built without an OUTPUT_DIR (their
    TensorBoard writer opens an events file at construction): never the checkout's
    ``./output``. Removed when the process exits."""
    if not _SCRATCH:
        _SCRATCH.append(tempfile.mkdtemp(prefix="oneshot_d2_tests_"))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return _SCRATCH[0]


# make_cfg's configs of the shipped files, and seeded_model's models, by their arguments: this
# process parses each YAML chain and draws each model's initial weights once (YAML parsing and
# weight initialisation were about a seventh of the tests' in-process CPU time); callers get
# copies.
_SHIPPED_CONFIGS: Dict[Tuple[str, ...], CfgNode] = {}
_SEEDED_MODELS: Dict[Tuple[str, int], Tuple[torch.nn.Module, torch.Tensor]] = {}
_MAX_CACHED_PARAMETERS = 20_000_000  # paper-size models are built anew (memory)


def make_cfg(config_file: str, *opts: str) -> CfgNode:
    """``get_cfg()`` + ``add_oneshot_config`` + the config file + ``opts`` (not frozen);
    OUTPUT_DIR a scratch folder unless ``opts`` set it. A new object on every call."""
    key = (os.path.abspath(config_file), *map(str, opts))
    cfg = _SHIPPED_CONFIGS.get(key)
    if cfg is None:
        cfg = get_cfg()
        add_oneshot_config(cfg)
        cfg.merge_from_file(config_file)
        cfg.OUTPUT_DIR = scratch_output_dir()
        cfg.merge_from_list(list(opts))
        # only the repository's files: a test's own YAML may change between two calls
        if key[0].startswith(os.path.join(REPO, "configs") + os.sep):
            _SHIPPED_CONFIGS[key] = cfg.clone()
        return cfg
    return cfg.clone()


def train_args(config_file: str, out_dir, *opts: str, eval_only: bool = False,
               resume: bool = False):
    """``tools/train_net.py`` arguments for :func:`oneshot_d2.engine.main`."""
    argv = ["--config-file", config_file] + (["--eval-only"] if eval_only else []) + (
        ["--resume"] if resume else [])
    return default_argument_parser().parse_args(
        argv + list(opts) + ["OUTPUT_DIR", str(out_dir)])


def seeded_model(cfg: CfgNode, seed: int = 0) -> torch.nn.Module:
    """``OneShotTrainer.build_model(cfg)`` after ``torch.manual_seed(seed)``: the same weights,
    and torch's random state left as that build leaves it. A new model on every call (a copy
    of the one built for the same config and seed earlier in this process)."""
    key = (repr(cfg), seed)
    if key not in _SEEDED_MODELS:
        torch.manual_seed(seed)
        model = OneShotTrainer.build_model(cfg)
        if sum(p.numel() for p in model.parameters()) > _MAX_CACHED_PARAMETERS:
            return model
        _SEEDED_MODELS[key] = (copy.deepcopy(model), torch.get_rng_state())
        return model
    model, rng_state = _SEEDED_MODELS[key]
    torch.set_rng_state(rng_state)
    return copy.deepcopy(model)


def split_batch(batch: Sequence[Dict]) -> Tuple[List[Dict], List[Dict]]:
    """(segmentation items, classification items) of a paired batch."""
    return ([x for x in batch if "instances" in x], [x for x in batch if "image_label" in x])


def state_digest(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """A copy of ``module.state_dict()`` (to compare before / after)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def dead_pid() -> int:
    """The id of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def other_host_tag() -> str:
    """A host tag (:func:`oneshot_d2.utils.temp_names.host_tag`) that is not this host's."""
    return "0" * 8 if host_tag() != "0" * 8 else "1" * 8


PREPARE_PHANTOM = os.path.join(REPO, "datasets", "prepare_phantom.py")
# a phantom of 64 px slices and a few images per split (PhantomSpec keywords / the tool's options)
TINY_PHANTOM = dict(size=64, seg_train=4, seg_test=2, cls_train=3, cls_val=3, cls_test=3,
                    slices_per_patient=2)
TINY_PHANTOM_ARGS = ["--size", "64", "--seg-train", "4", "--seg-test", "2", "--cls-train", "3",
                     "--cls-val", "3", "--cls-test", "3", "--slices-per-patient", "2"]


def _script_env(tmp_path, kill_at=None) -> Dict[str, str]:
    """The environment of :func:`run_script` and :func:`run_forked`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", DETECTRON2_DATASETS=str(tmp_path / "d2_empty"))
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return env


def run_script(args, tmp_path, kill_at=None, timeout=120) -> subprocess.CompletedProcess:
    """Run ``python <args>`` offline on one thread in ``tmp_path``, with an empty dataset root;
    with ``kill_at``, the process SIGKILLs itself at that stage
    (:mod:`oneshot_d2.utils.testing`)."""
    return subprocess.run([sys.executable, *args], env=_script_env(tmp_path, kill_at),
                          capture_output=True, text=True, timeout=timeout, cwd=str(tmp_path))


def run_forked(target: Callable[[], object], tmp_path, kill_at=None, timeout=120) -> int:
    """``target()`` in a child process forked from this one, with :func:`run_script`'s
    environment and folder (``kill_at``: the child SIGKILLs itself at that stage). For the kill
    tests, whose subject is what a killed writer leaves on disk: the child has this process's
    imports, so it starts in milliseconds where ``run_script`` spends about 3 CPU-seconds on
    the interpreter and imports. Returns the child's exit code: 0 when ``target`` returned, 1
    when it raised (its traceback on this test's stderr), ``-signal.SIGKILL`` when killed."""
    env = _script_env(tmp_path, kill_at)

    def child() -> None:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(str(tmp_path))
        target()

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"the forked child did not finish in {timeout} s")
    return process.exitcode


@contextlib.contextmanager
def captured_warnings(name: str = "oneshot_d2"):
    """WARNING+ messages of logger ``name`` (works although Detectron2's ``setup_logger``
    stops the project's logger from propagating to pytest's ``caplog``)."""
    records: List[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
