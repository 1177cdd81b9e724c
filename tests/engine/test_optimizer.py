"""SGDAdam equals torch's SGD and Adam on its respective groups; build_optimizer's choices."""
import pytest
import torch
from detectron2.config import get_cfg

from oneshot_d2 import add_oneshot_config
from oneshot_d2.engine.optimizer import SGDAdam, build_optimizer


def _params(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, 3, generator=g)),
            torch.nn.Parameter(torch.randn(5, generator=g))]


def _grads(step, shapes):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=g) for s in shapes]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdadam_matches_torch(nesterov):
    sgd_a, adam_a = _params(0), _params(1)
    sgd_b, adam_b = _params(0), _params(1)
    hybrid = SGDAdam([{"params": sgd_a}, {"params": adam_a, "adam": True, "lr": 3e-3}],
                     lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=1e-2,
                     betas=(0.8, 0.99))
    ref_sgd = torch.optim.SGD(sgd_b, lr=0.05, momentum=0.9, nesterov=nesterov,
                              weight_decay=1e-2)
    ref_adam = torch.optim.Adam(adam_b, lr=3e-3, betas=(0.8, 0.99), weight_decay=1e-2)
    for step in range(5):
        for ps in (sgd_a + adam_a, sgd_b + adam_b):
            for p, g in zip(ps, _grads(step, [p.shape for p in ps])):
                p.grad = g.clone()
        hybrid.step()
        ref_sgd.step()
        ref_adam.step()
    for a, b in zip(sgd_a + adam_a, sgd_b + adam_b):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # state round trip
    sd = hybrid.state_dict()
    again = SGDAdam([{"params": sgd_a}, {"params": adam_a, "adam": True, "lr": 3e-3}], lr=0.05)
    again.load_state_dict(sd)
    assert again.param_groups[1]["adam"] and again.state[adam_a[0]]["step"] == 5


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(3, 3)
        self.image_head = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


def _cfg(**solver):
    cfg = get_cfg()
    add_oneshot_config(cfg)
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def test_build_hybrid_optimizer_groups():
    model = _Toy()
    opt = build_optimizer(_cfg(OPTIMIZER="SGD", IMAGE_HEAD_OPTIMIZER="Adam", BASE_LR=0.02,
                               IMAGE_HEAD_LR_FACTOR=0.01), model)
    assert isinstance(opt, SGDAdam)
    head = {id(p) for p in model.image_head.parameters()}
    for g in opt.param_groups:
        is_head = {id(p) in head for p in g["params"]}
        assert is_head == {g["adam"]}
        assert g["lr"] == pytest.approx(2e-4 if g["adam"] else 0.02)


def test_build_plain_optimizers_and_errors():
    model = _Toy()
    assert type(build_optimizer(_cfg(OPTIMIZER="SGD"), model)) is torch.optim.SGD
    assert type(build_optimizer(_cfg(OPTIMIZER="AdamW"), model)) is torch.optim.AdamW
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(_cfg(OPTIMIZER="RMSprop"), model)
    with pytest.raises(ValueError, match="IMAGE_HEAD_OPTIMIZER"):
        build_optimizer(_cfg(OPTIMIZER="Adam", IMAGE_HEAD_OPTIMIZER="SGD"), model)
