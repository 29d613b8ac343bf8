# Two entry points for a fresh machine: `make up` runs the whole local platform,
# `make test` runs the whole test suite. Both build the virtualenv they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test install bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/heater up

test: $(STAMP)
	$(BIN)/python -m pytest -p no:cacheprovider --durations=25

clean:
	rm -rf $(VENV) .run
