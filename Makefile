# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The torch installed when the venv has none. The default is the CPU wheel this
# project is developed on; on a GPU machine, install your own torch into .venv
# first (it is kept), or run e.g. `make test TORCH=torch==2.13.0+cu128`.
TORCH  ?= torch==2.13.0

.PHONY: test demo install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --disable-pip-version-check -e ".[dev,lora]"
	touch $@

install: $(VENV)/.installed

test: install
	@bash scripts/ensure_browser.sh  # Chromium for tests/web; never fails, tests skip without it
	$(PY) -m pytest tests

# The demo's own folder, runs/demo, is replaced on every run; pass DEMO_ARGS="task=arithmetic"
# (or any `rlhfkit demo --help` option) to change it.
DEMO_ARGS ?=
demo: install
	$(VENV)/bin/rlhfkit demo out=runs/demo overwrite=true $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
