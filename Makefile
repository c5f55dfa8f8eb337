# midshift: `make demo` runs the simulated shift, `make test` runs the whole default suite.
PY ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

.PHONY: setup test lint unit demo scenarios bench clean

# The simulated shift arrives with issue 8; until then the demo runs the journal end to end.
demo: setup
	.venv/bin/python -m bench journal

setup:
	bash .ci/setup

lint:
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q -p no:cacheprovider

unit:
	$(PY) -m pytest -q tests/unit

bench:
	$(PY) -m bench journal --json

clean:
	rm -rf .pytest_cache build *.egg-info
