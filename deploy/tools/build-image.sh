#!/usr/bin/env bash
# Build the shardgate image (deploy/Dockerfile) with podman, without any container registry.
#
#   deploy/tools/build-image.sh            # -> localhost/shardgate:<chart appVersion>
#   IMAGE=localhost/shardgate:dev deploy/tools/build-image.sh
#
# The Dockerfile's default base (python:3.11-slim-bookworm) needs a registry; here the base is a
# Debian bookworm root filesystem made by mmdebstrap from Debian's packages (python3,
# python3-venv, ca-certificates), imported once as localhost/shardgate-base:bookworm. pip inside
# the build reaches PyPI; the host's CA bundle is passed in for TLS-inspecting proxies.
#
# Needs podman, runc and mmdebstrap; as root with apt-get they are installed when missing.
# Runs with runc and explicit ulimits because crun refuses this machine's hybrid cgroup setup and
# podman's default rlimits exceed what an unprivileged-capability root may set here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/helm/shardgate/Chart.yaml")"
IMAGE="${IMAGE:-localhost/shardgate:${VERSION}}"
BASE="${BASE_IMAGE:-localhost/shardgate-base:bookworm}"
CACHE="$ROOT/.cache/image"
PACKAGES=(podman runc mmdebstrap uidmap fuse-overlayfs)

die() { echo "build-image: $*" >&2; exit 1; }

ensure_tools() {
  local missing=()
  for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    die "missing ${missing[*]}: install them (Debian: apt-get install ${PACKAGES[*]})"
  fi
  echo "build-image: installing ${PACKAGES[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

# podman flags that work in this sandbox and are harmless elsewhere.
podman_flags() {
  local nproc
  nproc="$(ulimit -u)"
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
  echo "--ulimit nofile=$(ulimit -Sn):$(ulimit -Hn) --ulimit nproc=${nproc}:${nproc}"
}

ensure_base() {
  podman image exists "$BASE" && return
  mkdir -p "$CACHE"
  echo "build-image: making $BASE from Debian bookworm packages (about a minute)"
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$CACHE/base.tar"
  podman import --quiet "$CACHE/base.tar" "$BASE" >/dev/null
  rm -f "$CACHE/base.tar"
}

build() {
  local context
  context="$(mktemp -d)"
  trap 'rm -rf "$context"' RETURN
  # Only what the image needs: the build context stays small and free of .venv, .cache, tests.
  (cd "$ROOT" && tar cf - --exclude=__pycache__ pyproject.toml README.md shardgate sgproto ingress partition sgtools) \
    | tar xf - -C "$context"
  cp "$ROOT/deploy/Dockerfile" "$context/Dockerfile"
  local ca=()
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    ca=(-v /etc/ssl/certs/ca-certificates.crt:/run/build-ca.crt:ro --build-arg PIP_CERT=/run/build-ca.crt)
  fi
  # shellcheck disable=SC2046
  podman --runtime runc build --quiet --network host $(podman_flags) "${ca[@]}" \
    --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" -f "$context/Dockerfile" "$context" >/dev/null
  echo "build-image: built $IMAGE"
}

ensure_tools
ensure_base
build
