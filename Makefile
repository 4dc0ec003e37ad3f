# The two Quick start commands: `make demo` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed

# What `make typecheck` covers: the whole package (strictness per module in pyproject.toml).
TYPED := src/glidewms

.PHONY: demo test lint typecheck clean

# the test extra brings every optional dependency the tests exercise;
# constraints/dev.txt pins the tools
$(STAMP): pyproject.toml constraints/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints/dev.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/glidewms demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy --follow-imports=silent $(TYPED)

test: $(STAMP) lint typecheck
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) glidewms-demo glidewms-state
