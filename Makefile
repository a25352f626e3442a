# Two entry points on a fresh machine: `make demo` and `make test`.
# Every install step the project needs lives here and in scripts/.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: test demo lint typecheck layers compat unit system-deps clean bench \
        dist extension extension-lock extension-check deb

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check snapshot_runtime exporters tests benchmarks scripts dashboards
	$(VENV)/bin/ruff format --check snapshot_runtime exporters tests benchmarks scripts dashboards

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The import-linter contracts in pyproject.toml: layers, and what core/inputs may not import.
layers: $(STAMP)
	$(VENV)/bin/lint-imports

# Python 3.10 is the floor (requires-python); only one Python runs here, so the
# source is checked against 3.10: mypy and ruff target it (pyproject.toml) and
# vermin finds any newer stdlib name or syntax they would let through.
compat: $(STAMP)
	$(VENV)/bin/vermin -q -t=3.10- --no-tips --violations --eval-annotations \
	    snapshot_runtime exporters scripts tests benchmarks dashboards

# The extension package (scripts/extension_package.py, docs/operations.md).
# extension-check: every pin in deploy/extension/requirements.lock has wheels
# for CPython 3.10-3.13 on x86_64 and aarch64 at glibc <= 2.28. It needs the
# package index once per lock; the wheels are cached in .tools/extension/.
extension-check: $(STAMP)
	$(PY) scripts/extension_package.py check

# build/VMSnapshotLinux-<version>.zip, byte-identical for one commit.
extension: $(STAMP)
	$(PY) scripts/extension_package.py build

# build/snapshot-runtime_<version>-1_<arch>.deb: the extension zip's wheelhouse
# (this machine's architecture only), the sidecar unit, configs, logrotate
# rules; postinst builds /opt/snapshot-runtime/.venv offline (scripts/build-deb.sh).
deb: extension
	bash scripts/build-deb.sh --from-zip build/VMSnapshotLinux-$$($(PY) -c 'import json; print(json.load(open("deploy/extension/HandlerManifest.json"))[0]["version"])').zip

# After changing pyproject.toml's dependencies: re-pin, then commit the lock.
extension-lock: $(STAMP)
	$(PY) scripts/extension_package.py lock

# The wheel and the sdist, into dist/. setuptools' build/lib is cleared first:
# a module deleted from the tree would otherwise still ship in the wheel.
dist: $(STAMP)
	rm -rf build/lib build/bdist.*
	$(PY) -m build --outdir dist .

test: $(STAMP) system-deps lint typecheck layers compat extension-check
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: $(STAMP) system-deps
	$(PY) scripts/demo.py

bench: $(STAMP) system-deps
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache build dist
