# The two commands of this project: `make demo` and `make test`. Each sets up everything it needs
# on a fresh clone: a .venv with PyTorch and the package, and Debian's Fashion-MNIST when apt is
# there and the data is not.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The local PyTorch build of this machine kind; the package itself accepts torch 2.11 to 2.14.
TORCH ?= torch==2.14.1 torchvision==0.29.1
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-slow lint install data clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev,timm,onnx]"
	touch $@

install: $(VENV)/.installed

data:
	@if [ -d $(FMNIST) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "note: $(FMNIST) is absent and apt-get cannot install it here;" \
		     "give data.root=DIR holding the Fashion-MNIST IDX files"; \
	fi

demo: install data
	$(VENV)/bin/ckd demo

test: install data
	$(PY) -m pytest -q

# the tests marked slow (CI runs them after the default suite, time allowing)
test-slow: install data
	$(PY) -m pytest -q -m slow

# ruff, the layers of the package (pyproject's [tool.importlinter] contracts) and the types
# (mypy over src/ckd, pyproject's [tool.mypy])
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
