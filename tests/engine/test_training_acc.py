"""Accuracy test (Detectron2's *_training_acc_test style): the one-shot affinity model trained
briefly on the small phantom meets TEST.EXPECTED_RESULTS of its config, after training and again
through --eval-only of model_final.pth (identical numbers)."""
import numpy as np
import pytest

from oneshot_d2.data.datasets.builtin import register_cncb_layout
from oneshot_d2.engine import main
from tests.common import TRAINING_ACC, make_cfg, train_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(phantom_root, tmp_path_factory):
    register_cncb_layout(phantom_root, "phantom_acc")
    out = tmp_path_factory.mktemp("acc")
    return out, main(train_args(TRAINING_ACC, out))  # raises if EXPECTED_RESULTS are missed


def test_training_meets_expected_results(trained):
    _, results = trained
    assert len(make_cfg(TRAINING_ACC).TEST.EXPECTED_RESULTS) == 3
    assert results["phantom_acc_cls_train"]["classification"]["accuracy"] > 60.0


def test_eval_only_reproduces_the_training_results(trained):
    out, results = trained
    evaluated = main(train_args(TRAINING_ACC, out, "MODEL.WEIGHTS",
                                str(out / "model_final.pth"), eval_only=True))
    np.testing.assert_equal(evaluated, results)
