"""Cohort runs (``tools/predict.py --skip-existing``): a run killed half way and run again gives
the outputs of an uninterrupted run without recomputing the finished studies; any change of
input content, weights, config or output options recomputes. The model is the stub of
test_output_values, counting its calls."""
import json
import os

import numpy as np
import pytest

from tests.common import run_forked
from tests.inference.test_output_values import (
    N,
    StubPredictor,
    ct_volume,
    read_csv,
    run_predict,
    write_nifti,
)

STUDIES = ("apex", "base", "core")
RUN_DEPENDENT = ("created", "seconds")  # the only report.json keys that differ between runs


class CountingStub(StubPredictor):
    """The stub, counting the slices it is asked to predict."""

    slices = 0

    def predict(self, images):
        CountingStub.slices += len(images)
        yield from super().predict(images)


@pytest.fixture
def inputs(tmp_path):
    """Three NIfTI studies with different contents."""
    paths = []
    for k, name in enumerate(STUDIES):
        path = tmp_path / "in" / f"{name}.nii.gz"
        path.parent.mkdir(exist_ok=True)
        write_nifti(path, ct_volume() + 10.0 * k)
        paths.append(path)
    return paths


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"the stub needs no weights; their bytes are hashed")
    return path


def predict(monkeypatch, inputs, out, *opts):
    """A run with the counting stub; returns the number of slices the model was asked for."""
    CountingStub.slices = 0
    status, lines = run_predict(monkeypatch, inputs, out, *opts)
    assert status == 0, lines
    return CountingStub.slices


def outputs(out) -> dict:
    """Every output file's content (report.json without its run-dependent keys)."""
    files = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, out)
            if name == "report.json":
                with open(path, encoding="utf-8") as f:
                    report = json.load(f)
                files[rel] = {k: v for k, v in report.items() if k not in RUN_DEPENDENT}
            else:
                with open(path, "rb") as f:
                    files[rel] = f.read()
    return files


@pytest.fixture(autouse=True)
def counting(monkeypatch):
    """run_predict installs test_output_values.StubPredictor: make it the counting one."""
    import tests.inference.test_output_values as stub_module

    monkeypatch.setattr(stub_module, "StubPredictor", CountingStub)


@pytest.mark.slow
def test_a_killed_run_resumes_without_recomputing_finished_studies(monkeypatch, inputs, weights,
                                                                   tmp_path):
    # catches: studies.csv written only at the end (empty after a kill), --skip-existing
    # recomputing finished studies or ignored, a kept study's rows missing from the run's tables
    opts = ("--save-nifti", "MODEL.WEIGHTS", str(weights))
    reference = tmp_path / "reference"
    assert predict(monkeypatch, inputs, reference, *opts) == 3 * N
    out = tmp_path / "out"
    status = run_forked(lambda: predict(monkeypatch, inputs, out, *opts), tmp_path,
                        kill_at=f"predict-done:{STUDIES[1]}")
    assert status == -9
    assert sorted(os.listdir(out)) == ["apex", "base", "studies.csv"]
    assert [r["study"] for r in read_csv(out / "studies.csv")] == ["apex", "base"]
    assert predict(monkeypatch, inputs, out, "--skip-existing", *opts) == N  # "core" only
    assert outputs(out) == outputs(reference)
    # and once more: nothing left to compute
    assert predict(monkeypatch, inputs, out, "--skip-existing", *opts) == 0
    assert outputs(out) == outputs(reference)


def test_any_difference_recomputes(monkeypatch, inputs, weights, tmp_path):
    # catches: a fingerprint without the input's content, the weights' content, the config or
    # the output options (a stale result kept), or one holding a path (moved weights recompute)
    out = tmp_path / "out"
    base = ("MODEL.WEIGHTS", str(weights))
    assert predict(monkeypatch, inputs, out, *base) == 3 * N
    assert predict(monkeypatch, inputs, out, "--skip-existing", *base) == 0
    write_nifti(inputs[1], ct_volume() - 5.0)  # one study's content changes
    assert predict(monkeypatch, inputs, out, "--skip-existing", *base) == N
    report = json.loads((out / "base" / "report.json").read_text())
    assert report["fingerprint"]["input_sha256"] != json.loads(
        (out / "apex" / "report.json").read_text())["fingerprint"]["input_sha256"]
    weights.write_bytes(b"other weights")
    assert predict(monkeypatch, inputs, out, "--skip-existing", *base) == 3 * N
    moved = tmp_path / "moved.pth"
    os.rename(weights, moved)
    assert predict(monkeypatch, inputs, out, "--skip-existing", "MODEL.WEIGHTS", str(moved)) == 0
    assert predict(monkeypatch, inputs, out, "--skip-existing", "MODEL.WEIGHTS", str(moved),
                   "PREDICT.LESION_SCORE_THRESH", "0.6") == 3 * N
    assert predict(monkeypatch, inputs, out, "--skip-existing", "--save-nifti",
                   "MODEL.WEIGHTS", str(moved), "PREDICT.LESION_SCORE_THRESH", "0.6") == 3 * N
    assert predict(monkeypatch, inputs, out, "--save-nifti", "MODEL.WEIGHTS", str(moved),
                   "PREDICT.LESION_SCORE_THRESH", "0.6") == 3 * N  # without the option
    assert all(np.isfinite(float(r["score_COVID-19"])) for r in read_csv(out / "studies.csv"))
    # the inputs in another order: a study's source ("input k") changes, so it is recomputed
    opts = ("--save-nifti", "MODEL.WEIGHTS", str(moved), "PREDICT.LESION_SCORE_THRESH", "0.6")
    assert predict(monkeypatch, inputs[::-1], out, "--skip-existing", *opts) == 2 * N
    report = json.loads((out / "apex" / "report.json").read_text())
    assert report["source"] == "input 3" == report["fingerprint"]["source"]
