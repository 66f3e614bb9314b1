# The two commands a fresh machine needs: `make demo` and `make test`.
# Both create .venv (with uv, installed on the fly if missing) from the lock file.

PYTHON ?= python3
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: install install-dev demo test lint typecheck format docs clean

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install -q uv

# --compile-bytecode: these machines set PYTHONDONTWRITEBYTECODE=1, so without it every
# command would compile torch, Lightning and timm from source again (seconds of CPU each).
EXTRAS := --extra mpi --extra vector --extra onnx --extra tune
SYNC := $(UV) sync --frozen $(EXTRAS) --compile-bytecode

# What landseg needs to run (make demo): no development tools. --inexact keeps the development
# tools of an earlier `make test` instead of removing them.
$(VENV)/.installed-run: pyproject.toml uv.lock | $(UV)
	$(SYNC) --no-default-groups --inexact
	touch $@

# Plus the development tools (pytest, ruff, mypy): make test, lint, format.
$(VENV)/.installed-dev: pyproject.toml uv.lock | $(UV)
	$(SYNC)
	touch $@ $(VENV)/.installed-run

install: $(VENV)/.installed-run

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/landseg demo-data $(DEMO_DIR)
	$(BIN)/landseg validate -c $(DEMO_DIR)/demo.json
	$(BIN)/landseg train -c $(DEMO_DIR)/demo.json

# pytest exits 5 when it collects no test: that must fail, not pass silently. mypy (about 25 s
# of one core from a clean clone) runs beside pytest, whose tests leave a core idle most of the
# time; its report is printed after pytest's, and either failing fails the target.
test: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	@$(BIN)/mypy > $(VENV)/mypy.log 2>&1 & mypy_pid=$$!; \
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	wait $$mypy_pid; mypy_rc=$$?; echo "mypy:"; cat $(VENV)/mypy.log; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; \
	if [ $$mypy_rc -ne 0 ]; then echo "mypy failed"; exit $$mypy_rc; fi; exit $$rc

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

typecheck: install-dev
	$(BIN)/mypy

docs: install
	$(BIN)/python -m landseg.config.docs > docs/configuration.md

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache
