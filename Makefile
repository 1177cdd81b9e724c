# oneshot_d2: the README's two commands are `make demo` and `make test`; both install first
# (idempotent: a second run reuses .venv and its install step takes seconds).
PY := .venv/bin/python
export DETECTRON2_DATASETS ?= datasets
DEMO_CONFIG ?= configs/quick_schedules/oneshot_affinity_R_18_FPN_phantom_quick.yaml
DEMO_OPTS ?=
PYTEST_ARGS ?=

.PHONY: install demo test lint data clean

install:
	bash tools/install.sh

data: install
	$(PY) datasets/prepare_phantom.py

demo: data
	$(PY) tools/train_net.py --config-file $(DEMO_CONFIG) $(DEMO_OPTS)

test: install lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf build output
