# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all clean

install: $(STAMP)

# torch/torchvision are pinned to the pair measured to work with basicsr 1.4.2.
# basicsr builds from its sdist; its setup.py imports torch, hence no build isolation.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --no-build-isolation basicsr==1.4.2
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

demo: install
	$(PY) -m clsr_arch.demo

test: install
	$(PY) -m pytest -q tests

test-all: install
	$(PY) -m pytest -q --runslow tests

clean:
	rm -rf $(VENV) build *.egg-info
