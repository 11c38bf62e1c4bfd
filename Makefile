# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install browser demo test test-all clean

install: $(STAMP)

# torch/torchvision are pinned to the pair measured to work with basicsr 1.4.2.
# basicsr builds from its sdist; its setup.py imports torch, hence no build isolation.
$(STAMP): setup.py clsr_basicsr_hook.pth
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --no-build-isolation basicsr==1.4.2
	$(PY) -m pip install -e '.[dev]'
	$(MAKE) browser
	touch $(STAMP)

# The real-browser test (tests/test_viewer_browser.py) drives Debian's Chromium through
# Playwright (Playwright's own browser download cannot work here). Installed where the machine
# allows it (root with apt, as on CI); elsewhere the test skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get install -y --no-install-recommends chromium || \
	  (apt-get update && apt-get install -y --no-install-recommends chromium) || \
	  echo "chromium could not be installed: the browser test will skip (and fail under CLSR_REQUIRE_BROWSER)"; \
	else echo "chromium not installed (needs root and apt-get): the browser test will skip"; fi

demo: install
	$(PY) -m clsr_arch.demo

test: install
	$(PY) -m pytest -q tests

test-all: install
	$(PY) -m pytest -q --runslow tests

clean:
	rm -rf $(VENV) build *.egg-info
