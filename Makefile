# The two Quick start commands: `make demo` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed

# What `make typecheck` covers; pool/ joins it once it passes (pyproject.toml
# already holds its strictness).
TYPED := src/glidewms/__init__.py src/glidewms/protocol.py src/glidewms/extras.py \
         src/glidewms/client.py src/glidewms/db.py src/glidewms/service.py \
         src/glidewms/launcher.py src/glidewms/classads.py src/glidewms/security \
         src/glidewms/cli/main.py src/glidewms/cli/user.py src/glidewms/cli/pool_cmds.py \
         src/glidewms/cli/demo.py src/glidewms/frontend src/glidewms/factory \
         src/glidewms/config src/glidewms/submit src/glidewms/glidein

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

# modules outside TYPED are followed for their types but their errors not shown
typecheck: $(STAMP)
	$(VENV)/bin/mypy --follow-imports=silent $(TYPED)

test: $(STAMP) lint typecheck
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) glidewms-demo glidewms-state
