# tollhouse: `make demo` runs the demo, `make test` runs every test (installing what they need).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: venv sysdeps proto test lint typecheck unit component e2e deploy demo bench bench-smoke clean fuzz soak

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests need (CI runs as root on a fresh machine).
# wrk and h2load (nghttp2-client) are for the benchmark, whose smoke run is part of the tests;
# chromium is the headless browser the usage page's tests drive (playwright, no browser download).
# gcc builds the slow-fsync LD_PRELOAD shim of tests/reliability/test_faults_fsync.py.
sysdeps:
	@if ! command -v redis-server >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	    || ! command -v wrk >/dev/null || ! command -v h2load >/dev/null \
	    || ! test -x /usr/bin/chromium || ! command -v faketime >/dev/null \
	    || ! command -v cc >/dev/null; then \
	  echo "installing redis-server, postgresql, wrk, nghttp2-client, chromium, faketime and gcc"; \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    redis-server postgresql wrk nghttp2-client chromium faketime gcc libc6-dev >/dev/null; \
	fi

# Regenerate src/tollhouse/_pb from proto/ (checked in; tests verify it is fresh).
proto: venv
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=src/tollhouse/_pb \
	  --pyi_out=src/tollhouse/_pb proto/tollhouse/v1/usage.proto

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

test: venv sysdeps lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

# The tiers (markers in tests/conftest.py): `make test` runs all of them.
unit: venv
	$(BIN)/pytest -q -p no:cacheprovider -m unit

component: venv sysdeps
	$(BIN)/pytest -q -p no:cacheprovider -m component

e2e: venv sysdeps
	$(BIN)/pytest -q -p no:cacheprovider -m e2e

deploy: venv sysdeps
	$(BIN)/pytest -q -p no:cacheprovider -m deploy

# Keys, configs, logs, meter, ledger and invoices of the last demo run stay in demo-out/.
demo: venv
	rm -rf demo-out
	$(BIN)/tollhouse demo --workdir demo-out $(ARGS)

bench: venv sysdeps
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info

# Longer fuzzing than CI's budget (tests/reliability/test_fuzz.py: 150 examples per target there;
# test_stateful.py: 25 sequences of 40 steps per machine there).
fuzz: venv
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-5000} STATEFUL_EXAMPLES=$${STATEFUL_EXAMPLES:-500} \
	STATEFUL_STEPS=$${STATEFUL_STEPS:-80} $(BIN)/pytest -q -p no:cacheprovider \
	  tests/reliability/test_fuzz.py tests/reliability/test_stateful.py tests/unit/test_als_wire.py

# Minutes of steady load through Envoy with periodic faults (outside CI): memory, fds, latency,
# and the admitted == metered == billed invariant. `make soak MINUTES=3` for a short run.
soak: venv sysdeps
	$(BIN)/python -m tests.reliability.soak --minutes $${MINUTES:-30} --interval-s $${INTERVAL_S:-60}
