"""Worker for the launch tests (importable by name, since mp.spawn pickles functions by
reference)."""
import hashlib
import os

import torch
from detectron2.utils import comm

import oneshot_d2  # noqa: F401  isort: skip
from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.engine import OneShotTrainer, setup
from oneshot_d2.engine.utils import unwrap_model


def train_and_fingerprint(args, phantom_root: str, out_file: str) -> None:
    """Train, then write ``world_size param_digest pid buffer_digest image_loss_seen`` to
    ``out_file.<rank>``."""
    register_cncb_layout(phantom_root, "launch")
    cfg = setup(args)
    trainer = OneShotTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = unwrap_model(trainer.model)
    digests = []
    for tensors in (model.named_parameters(), model.named_buffers()):
        digest = hashlib.sha256()
        for name, p in sorted(tensors):
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        digests.append(digest.hexdigest())
    image_loss_seen = True  # the storage's losses exist on rank 0 only
    if comm.is_main_process() and "loss_image_cls" in trainer.storage.histories():
        history = trainer.storage.history("loss_image_cls").values()
        image_loss_seen = any(v > 0 for v, _ in history)
    with open(f"{out_file}.{comm.get_rank()}", "w") as f:
        f.write(f"{comm.get_world_size()} {digests[0]} {os.getpid()} {digests[1]} "
                f"{image_loss_seen}")
    torch.distributed.barrier()


def machine_main() -> None:
    """One "machine" of a multi-machine run, as its own OS process:
    ``python -c "from tests.engine.launch_worker import machine_main; machine_main()" JSON``
    with JSON ``{"argv", "phantom_root", "out_file", "machine_rank", "num_machines",
    "dist_url"}``: Detectron2's ``launch`` with one process on this machine."""
    import json
    import sys

    from detectron2.engine import launch

    from tests.common import train_args

    spec = json.loads(sys.argv[1])
    args = train_args(*spec["argv"])
    launch(train_and_fingerprint, 1, num_machines=spec["num_machines"],
           machine_rank=spec["machine_rank"], dist_url=spec["dist_url"],
           args=(args, spec["phantom_root"], spec["out_file"]))
