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

# The suite runs on TEST_WORKERS pytest-xdist processes (each its own databases and Redis prefixes,
# a test file stays on one worker); tests marked `serial` (they restart the machine's Postgres) run
# alone afterwards. Exit code 5 = "no tests collected" (PYTEST_ARGS selected none of that half).
TEST_WORKERS ?= auto
TEST_ENV = INBOXLAYER_TEST_DATABASES=$${INBOXLAYER_TEST_DATABASES:-sqlite,postgres}
test: $(STAMP) services
	$(TEST_ENV) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(TEST_ENV) $(BIN)/python -m pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench: $(STAMP) services
	$(BIN)/python bench/smtp_throughput.py

clean:
	rm -rf $(VENV) var .pytest_cache
