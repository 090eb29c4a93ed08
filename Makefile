# The two set-up commands of the README: `make demo` and `make test` (`make test-fast`: the
# subset for development, without the tests marked slow or e2e; docs/development.md).
# Both run `make install`, which is idempotent: it creates .venv with python3 if missing and
# installs the pinned requirements plus mmar in editable mode, once per change of the pins.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmar-installed
# torch + transformers for the export tests only (requirements-export.txt), own stamp.
EXPORT_STAMP := $(VENV)/.mmar-export-installed
# 8 fake CPU devices so the sharding tests see a mesh; quiet TensorFlow's C++ logging.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 TF_CPP_MIN_LOG_LEVEL=2

.PHONY: install demo test test-fast clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: install
	TF_CPP_MIN_LOG_LEVEL=2 $(VENV)/bin/mmar demo --config=configs/t2i_shapes.py:tiny --workdir=runs/demo

$(EXPORT_STAMP): requirements-export.txt $(STAMP)
	$(PY) -m pip install -q -r requirements-export.txt
	touch $(EXPORT_STAMP)

test: install $(EXPORT_STAMP)
	$(TEST_ENV) $(PY) -m pytest -q tests

test-fast: install $(EXPORT_STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -m "not slow and not e2e" tests

clean:
	rm -rf runs .pytest_cache
