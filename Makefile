# oneshot_d2: the README's two commands are `make demo` and `make test`; both install first
# (idempotent: a second run reuses .venv and its install step takes seconds).
PY := .venv/bin/python
export DETECTRON2_DATASETS ?= datasets
DEMO_CONFIG ?= configs/quick_schedules/oneshot_affinity_R_18_FPN_phantom_quick.yaml
DEMO_OPTS ?=
PYTEST_ARGS ?=
# one pytest process per core (pytest-xdist); a module's tests stay in one process, and modules
# start in the order tests/conftest.py gives (the longest first; without --no-loadscope-reorder
# pytest-xdist would start the modules with the most tests first and the longest one late, alone
# at the end); `make test` lists its 25 slowest tests at the end (where the time goes)
PYTEST_PARALLEL ?= -n auto --dist loadscope --no-loadscope-reorder

DEMO_OUTPUT ?= output/$(basename $(notdir $(DEMO_CONFIG)))
PREDICT_OUTPUT ?= output/predict_demo
# The real-CT model (MODEL_ZOO.md): REAL_DATA holds the four public sets laid out as
# datasets/README.md says (medseg98/, covid19_ct_seg/, ucsd_covid_ct/, mosmed/).
REAL_DATA ?= datasets/sources
REAL_CONFIG ?= configs/real/oneshot_affinity_efflite0_FPN_1000iter_mosmed.yaml
REAL_OPTS ?=

.PHONY: install demo predict-demo test test-quick lint data real-data real-model clean

install:
	bash tools/install.sh

data: install
	$(PY) datasets/prepare_phantom.py

demo: data
	$(PY) tools/train_net.py --config-file $(DEMO_CONFIG) $(DEMO_OPTS)

# The model `make demo` trained, run on a phantom patient written as a DICOM series and a NIfTI
# volume: report.json, report.html, slices.csv, overlays, summary.png and lesions.nii.gz per
# study, index.html over the run; then the DICOM series again for its DICOM SEG and SR (they
# carry the patient's identifiers, here the phantom's) in $(PREDICT_OUTPUT)/dicom_objects.
predict-demo: install
	$(PY) datasets/prepare_phantom_study.py
	$(PY) tools/predict.py --config-file $(DEMO_CONFIG) \
	    --input $(DETECTRON2_DATASETS)/phantom_study/dicom \
	    $(DETECTRON2_DATASETS)/phantom_study/nifti/phantom_ct.nii.gz \
	    --output $(PREDICT_OUTPUT) --save-overlays --save-nifti --output-type html \
	    MODEL.WEIGHTS $(DEMO_OUTPUT)/model_final.pth
	$(PY) tools/predict.py --config-file $(DEMO_CONFIG) \
	    --input $(DETECTRON2_DATASETS)/phantom_study/dicom \
	    --output $(PREDICT_OUTPUT)/dicom_objects --output-type dicom-seg --output-type dicom-sr \
	    --keep-identifiers MODEL.WEIGHTS $(DEMO_OUTPUT)/model_final.pth

# The public sets converted and registered under $(DETECTRON2_DATASETS)/public.
real-data: install
	@for d in medseg98 covid19_ct_seg ucsd_covid_ct mosmed; do \
	    [ -f "$(REAL_DATA)/$$d/manifest.csv" ] || { echo "real-data: $(REAL_DATA)/$$d/manifest.csv \
	    not found (set REAL_DATA; layouts in datasets/README.md)" >&2; exit 2; }; done
	$(PY) datasets/prepare_public.py --medseg $(REAL_DATA)/medseg98 \
	    --covid19-ct-seg $(REAL_DATA)/covid19_ct_seg --ucsd $(REAL_DATA)/ucsd_covid_ct \
	    --mosmed $(REAL_DATA)/mosmed

# Trains and evaluates the best real-CT config (CPU, about an hour; MODEL_ZOO.md).
real-model: real-data
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) tools/train_net.py --config-file $(REAL_CONFIG) \
	    $(REAL_OPTS)

test: install lint
	bash tools/install_browser.sh
	$(PY) -m pytest $(PYTEST_PARALLEL) --durations=25 $(PYTEST_ARGS)

# the same without the tests marked slow (training, processes, tools end to end)
test-quick: install lint
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf build output
