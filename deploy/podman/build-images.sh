#!/usr/bin/env bash
# Build attnserve's CPU image (and the local Prometheus image) with podman on a host that cannot
# reach an image registry: the base is made from Debian's archive (build-base.sh) and pip in the
# build uses the host's package sources (pip_sources.py). Run from anywhere, as root:
#
#   deploy/podman/build-images.sh            # base (once) + attnserve:latest-cpu + attnserve-prometheus:local
#   TARGETS="runtime-cpu" deploy/podman/build-images.sh
#
# Tags: localhost/attnserve:${ATTNSERVE_IMAGE_TAG:-latest}-cpu (what docker-compose.cpu.yml names)
# and localhost/attnserve-prometheus:local (docker-compose.local.yml). PYTHON the host
# interpreter whose pip configuration is copied (default python3). --format docker: the OCI
# format has no HEALTHCHECK, and podman drops it.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"
BASE="${BASE_IMAGE:-localhost/attnserve-base:bookworm}"
TAG="${ATTNSERVE_IMAGE_TAG:-latest}"
PYTHON="${PYTHON:-python3}"

"$HERE/build-base.sh" "$BASE"

CONF="$(mktemp -d)"
trap 'rm -rf "$CONF"' EXIT
mapfile -t PIP_ARGS < <("$PYTHON" "$HERE/pip_sources.py" --conf-dir "$CONF" --pip "$PYTHON -m pip")

cd "$ROOT"
podman build --layers --format docker -f deploy/docker/Dockerfile --target runtime-cpu \
  --build-arg "PYTHON_IMAGE=$BASE" "${PIP_ARGS[@]}" \
  -t "localhost/attnserve:$TAG-cpu" .
podman build --layers --format docker -f deploy/prometheus/Dockerfile \
  --build-arg "BASE_IMAGE=$BASE" \
  -t localhost/attnserve-prometheus:local deploy/prometheus
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'attnserve(-prometheus)?:'
