#!/usr/bin/env bash
# Serve the shared conformance deployment and run the conformance suite against a running
# shardgate cluster (`make run`). Env: INGRESS (http://127.0.0.1:8080), ADMIN
# (http://127.0.0.1:9070), DEPLOY_PORT (9080), SHARED (../shared), CASES (-k filters).
# The suite lives only in the steering repository's shared/ folder, not in this project: without
# it the script says so on one line and exits 2 (`make test` never needs it).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${SHARED:-../shared}"
INGRESS="${INGRESS:-http://127.0.0.1:8080}"
ADMIN="${ADMIN:-http://127.0.0.1:9070}"
DEPLOY_PORT="${DEPLOY_PORT:-9080}"
if [ ! -f "$SHARED/conformance/run.py" ] || [ ! -f "$SHARED/conformance/service.py" ]; then
  echo "conformance: no conformance suite at $SHARED/conformance (set SHARED=/path/to/shared); nothing run" >&2
  exit 2
fi
(cd "$SHARED/conformance" && exec "$OLDPWD/.venv/bin/hypercorn" service:app --bind "127.0.0.1:$DEPLOY_PORT") &
DEPLOY_PID=$!
trap 'kill $DEPLOY_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
  curl -sf "http://127.0.0.1:$DEPLOY_PORT/health" >/dev/null && break
  sleep 0.2
done
.venv/bin/python "$SHARED/conformance/run.py" --ingress "$INGRESS" --admin "$ADMIN" \
  --deployment "http://127.0.0.1:$DEPLOY_PORT" ${CASES:-}
