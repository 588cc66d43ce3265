# `make run` and `make test` are the only commands a fresh machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install services clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/inboxlayer dev

services:
	bash scripts/test-services.sh

test: $(STAMP) services
	INBOXLAYER_TEST_DATABASES=$${INBOXLAYER_TEST_DATABASES:-sqlite,postgres} $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) services
	$(BIN)/python bench/smtp_throughput.py

clean:
	rm -rf $(VENV) var .pytest_cache
