"""The tools share one CUDA policy (:func:`oneshot_d2.config.resolve_device`): a CUDA device of
the config falls back to the CPU without a GPU, a ``--device cuda`` asked for by name is refused
with one line and exit status 2."""
from oneshot_d2.engine.defaults import build_config
from tests.bad_input import PREDICT, assert_one_error, run_tool
from tests.common import AFFINITY_QUICK, MASK_RCNN_QUICK, train_args


def test_train_net_runs_a_cuda_config_on_the_cpu_without_a_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cfg = build_config(train_args(MASK_RCNN_QUICK, tmp_path, "MODEL.DEVICE", "cuda"))
    assert cfg.MODEL.DEVICE == "cpu"


def test_predict_refuses_device_cuda_without_a_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    status, lines = run_tool(PREDICT, "--config-file", AFFINITY_QUICK, "--input", str(tmp_path),
                             "--output", str(tmp_path / "out"), "--device", "cuda")
    assert_one_error(status, lines, "predict", "--device 'cuda': no CUDA GPU is available")
    assert not (tmp_path / "out").exists()
