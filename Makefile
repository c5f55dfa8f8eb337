# midshift: `make demo` runs the simulated shift, `make test` runs the whole default suite.
PY ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.PHONY: setup test test-network lint unit demo scenarios bench clean dst

SCENARIOS := $(basename $(notdir $(wildcard midshift/simulator/scenarios/*.toml)))

# The simulated shift at 4x: devices, broker, ledger, agent, faults; summary and report.
demo: setup
	.venv/bin/python -m midshift.simulator run shift --speed 4 --report build/shift-report

# Every scenario at full length (the default test run plays their short versions), at
# real speed unless told otherwise: make scenarios SPEED=4 (about 25 min at 1).
SPEED ?= 1
scenarios:
	@set -e; for s in $(SCENARIOS); do \
	  echo "== $$s"; $(PY) -m midshift.simulator run $$s --speed $(SPEED) --report build/scenarios/$$s; \
	done

# The deterministic simulation, longer than the budget make test runs: make dst SEEDS=5000
SEEDS ?= 1000
dst:
	$(PY) -m midshift.simulator dst --seeds $(SEEDS)

setup:
	bash .ci/setup

lint:
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q -p no:cacheprovider --durations=25

# Tests that need the package index (PyPI), left out of `make test`: the offline install
# end to end (a wheelhouse for this machine) and the Raspberry Pi platforms' wheels.
test-network:
	$(PY) -m pytest -q -p no:cacheprovider -m network

unit:
	$(PY) -m pytest -q tests/unit

bench:
	$(PY) -m bench journal --json

clean:
	rm -rf .pytest_cache build *.egg-info
