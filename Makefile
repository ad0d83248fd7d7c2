# Two commands for a fresh Debian machine: `make run` and `make test` (see README).
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= var
PUBLIC_ADDRESS ?= 127.0.0.1
# pytest-xdist workers for `make test`: most long tests wait on real peers, not on the CPU
TEST_WORKERS ?= 2

.PHONY: run test lint bench clean

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

## run: install into .venv, initialise ./var when absent, start gateway + portal
run: $(BIN)/.installed
	@test -d $(DATA_DIR) || $(BIN)/sslvpn --data-dir $(DATA_DIR) init --public-address $(PUBLIC_ADDRESS)
	$(BIN)/sslvpn --data-dir $(DATA_DIR) serve

## test: install what the tests need (apt packages too), lint, type-check, run the suite
test: $(BIN)/.installed
	scripts/install-test-deps
	$(BIN)/ruff check sslvpn client_profiles web tests bench
	$(BIN)/mypy
	$(BIN)/pytest -p no:cacheprovider -n $(TEST_WORKERS)

lint: $(BIN)/.installed
	$(BIN)/ruff check sslvpn client_profiles web tests bench
	$(BIN)/mypy

## bench: ours vs OpenVPN 2.6 and strongSwan in namespaces (root, ~15 min; BENCH_ARGS=--quick)
bench: $(BIN)/.installed
	scripts/install-test-deps
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
