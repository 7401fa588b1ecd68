# Two commands do the whole set-up: `make demo` and `make test` each create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
GPQ := $(VENV)/bin/gpq
DEMO_DIR ?= runs/demo
DEMO_EPOCHS ?= 40
# A narrower VGG than the original's (64,128,256,512) so the demo trains in minutes on 2 CPU cores.
DEMO_FILTERS ?= 16,32,64,64
DEMO_SEED ?= 0
# pytest-xdist workers; a test file stays on one worker (its module fixtures are built once)
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

.PHONY: demo notebook test test-jax test-torch test-fast test-oldest lint docs bench clean browser

$(VENV)/.installed: requirements.txt requirements-hub.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-hub.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: $(VENV)/.installed
	$(GPQ) train --data digits --output $(DEMO_DIR) --epochs $(DEMO_EPOCHS) --batch-size 100 \
		--filters $(DEMO_FILTERS) --seed $(DEMO_SEED) --deterministic --overwrite
	$(GPQ) evaluate --model $(DEMO_DIR)/model.keras --data digits --json $(DEMO_DIR)/eval.json \
		--figure $(DEMO_DIR)/ranked.png

# The demo notebook, executed on the demo model (`make demo` first) and saved with its outputs.
notebook: $(VENV)/.installed
	test -f $(DEMO_DIR)/model.keras || $(MAKE) demo
	$(PY) notebooks/execute.py notebooks/demo.ipynb

# Lint and the docs first (seconds), then the suite on TensorFlow, then the tests marked `backends`
# (layers, losses, backbone, model) on JAX and on PyTorch.
test: $(VENV)/.installed browser
	$(MAKE) lint docs
	$(PYTEST) tests
	$(MAKE) test-jax
	$(MAKE) test-torch

# Debian's chromium and its driver, for the web page's test (tests/test_serve_browser.py), when absent
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; }

test-jax: $(VENV)/.installed
	KERAS_BACKEND=jax $(PYTEST) tests

test-torch: $(VENV)/.installed
	KERAS_BACKEND=torch $(PYTEST) tests

# The lowest Keras and TensorFlow that setup.cfg admits, in a second venv (tensorflow-metadata
# 1.17 and later import protobuf 5, which TensorFlow 2.16 does not allow, and break tfds' import):
# the files of earlier versions (tests/data/) and a quick subset, about 3 minutes from nothing.
VENV_OLDEST ?= .venv-oldest
OLDEST := keras==3.15.0 tensorflow-cpu==2.16.1 tensorflow-metadata==1.16.1

$(VENV_OLDEST)/.installed: setup.cfg
	test -x $(VENV_OLDEST)/bin/python || $(PYTHON) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/python -m pip install -q --upgrade pip
	$(VENV_OLDEST)/bin/python -m pip install -q $(OLDEST) pytest==9.2.0 -e .
	touch $@

test-oldest: $(VENV_OLDEST)/.installed
	$(VENV_OLDEST)/bin/python -m pytest -q -p no:cacheprovider tests/test_old_versions.py tests/test_model.py
	$(VENV_OLDEST)/bin/python -m pytest -q -p no:cacheprovider -m "not large" tests/test_layers.py \
		tests/test_losses.py tests/test_training.py tests/test_cli.py tests/test_index.py \
		tests/test_data_pipeline.py

# Everything but the slow end-to-end tests (@pytest.mark.large), on TensorFlow: about a minute.
test-fast: $(VENV)/.installed
	$(PYTEST) -m "not large" tests

# ruff (pyproject.toml): the formatting and the lint rules
lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# The MkDocs site (docs/, API pages from the docstrings): a broken link or reference fails
docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir $(VENV)/site

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_train_step.py

clean:
	rm -rf $(VENV) $(VENV_OLDEST) runs .pytest_cache
