# resilfs: set-up, tests, benchmarks. Every target installs what it is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config libisal-dev attr fio python3-pyverbs \
                sqlite3 git iproute2 gcc python3-dev
EXT_SOURCES := $(wildcard ext/*.pyx ext/*.pxd ext/*.h ext/*.c)
PYTEST_ARGS ?=

.PHONY: all sysdeps venv build test test-unit test-transport test-fs test-fault bench demo lint clean

all: build

# System packages: installed with apt-get only when dpkg says one is missing.
sysdeps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }

# The venv with pinned build tools, the package (editable) and its test extras.
# Packages are built without isolation, so every build requirement of a dependency that
# comes as an sdist is installed here first: pyfuse3's is setuptools_scm (without it the
# sdist builds as version 0.0.0 and pip refuses it). constraints.txt pins every package
# that is installed, direct or not.
BUILD_TOOLS := setuptools wheel Cython setuptools_scm packaging
PIP := $(VPY) -m pip install -q --disable-pip-version-check -c constraints.txt
$(VENV)/.installed: setup.cfg setup.py pyproject.toml constraints.txt | sysdeps
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(PIP) $(BUILD_TOOLS)
	$(PIP) --no-build-isolation -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The extension is rebuilt in place whenever a source in ext/ changes.
$(VENV)/.ext-built: $(VENV)/.installed $(EXT_SOURCES) setup.py
	$(VPY) setup.py -q build_ext --inplace
	touch $@

build: sysdeps $(VENV)/.ext-built

test: build
	$(VPY) -m pytest $(PYTEST_ARGS) tests

test-unit test-transport test-fs test-fault: test-%: build
	$(VPY) -m pytest $(PYTEST_ARGS) tests/$*

bench: build
	@set -e; for s in scripts/bench_*; do echo "== $$s"; \
	  case $$s in *.py) $(VPY) $$s ;; *.sh) PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash $$s ;; esac; done

demo: build
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/demo.sh

lint: build
	$(VENV)/bin/ruff check resilfs tests scripts

clean:
	rm -rf build $(VENV) *.egg-info resilfs/*.so ext/*.c
