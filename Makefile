# `make demo` and `make test` create or refresh .venv (re-installed whenever pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# tests/conftest.py sets the test processes' XLA flags (8 CPU devices), platform and compilation cache
# glibc allocator settings that keep large host buffers from fragmenting (faster on CPU).
RUN_ENV := MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=131072 TOKENIZERS_PARALLELISM=false

.PHONY: venv demo test test-profile lint docs bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,tpu]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(RUN_ENV) $(VENV)/bin/jaxspo train configs/demo.yaml $(ARGS)

# Tests run in TEST_WORKERS processes (pytest-xdist), a test file per process at a time (its module fixtures stay shared),
# the longest files first (tests/conftest.py orders them; xdist keeps that order).
TEST_WORKERS ?= 2

test: venv
	$(RUN_ENV) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# `make test` that also rewrites tests/cpu_profile.jsonl (each test's CPU seconds): the file order and slow marks of
# tests/conftest.py follow it. Refresh it after adding or renaming costly tests.
test-profile: venv
	rm -f tests/cpu_profile.jsonl.new
	JAXSPO_TEST_CPU_LOG=$(CURDIR)/tests/cpu_profile.jsonl.new $(MAKE) test
	LC_ALL=C sort tests/cpu_profile.jsonl.new > tests/cpu_profile.jsonl && rm tests/cpu_profile.jsonl.new

# ruff format --check (120 columns) and ruff check: pyflakes, syntax errors and line length (pyproject.toml
# [tool.ruff]); tests/test_lint.py runs the same checks. `ruff format .` fixes the formatting.
lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# The documentation site (mkdocs.yml, pages in docs/) into site/: the configuration reference is regenerated from the
# config dataclasses first, and --strict fails the build on a broken link or anchor; tests/test_docs_site.py does the same.
docs: venv
	$(PY) -m jaxspo.config_reference
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# jaxspo vs TRL and Tunix side by side (benchmarks/vs_peers.py); the peers' venvs go to benchmarks/.venvs.
# Each runner gets each heap of benchmarks/peers/heaps.py (glibc's defaults, RUN_ENV's MALLOC_* thresholds, the held heap), not RUN_ENV's.
bench: venv
	$(RUN_ENV) JAX_PLATFORMS=cpu $(PY) benchmarks/vs_peers.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache site
