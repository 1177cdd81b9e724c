# oneshot_d2: the README's two commands are `make demo` and `make test`; both install first
# (idempotent: a second run reuses .venv and its install step takes seconds).
PY := .venv/bin/python
export DETECTRON2_DATASETS ?= datasets
DEMO_CONFIG ?= configs/quick_schedules/oneshot_affinity_R_18_FPN_phantom_quick.yaml
DEMO_OPTS ?=
PYTEST_ARGS ?=

DEMO_OUTPUT ?= output/$(basename $(notdir $(DEMO_CONFIG)))
PREDICT_OUTPUT ?= output/predict_demo

.PHONY: install demo predict-demo test lint data clean

install:
	bash tools/install.sh

data: install
	$(PY) datasets/prepare_phantom.py

demo: data
	$(PY) tools/train_net.py --config-file $(DEMO_CONFIG) $(DEMO_OPTS)

# The model `make demo` trained, run on a phantom patient written as a DICOM series and a NIfTI
# volume: report.json, slices.csv, overlays, summary.png and lesions.nii.gz per study.
predict-demo: install
	$(PY) datasets/prepare_phantom_study.py
	$(PY) tools/predict.py --config-file $(DEMO_CONFIG) \
	    --input $(DETECTRON2_DATASETS)/phantom_study/dicom \
	    $(DETECTRON2_DATASETS)/phantom_study/nifti/phantom_ct.nii.gz \
	    --output $(PREDICT_OUTPUT) --save-overlays --save-nifti \
	    MODEL.WEIGHTS $(DEMO_OUTPUT)/model_final.pth

test: install lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf build output
