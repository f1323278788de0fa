#!/usr/bin/env bash
# Build attnserve's CPU image (and the local Prometheus image) with podman on a host that cannot
# reach an image registry: the base is made from Debian's archive (build-base.sh) and pip in the
# build uses the host's package sources (pip_sources.py). Run from anywhere, as root:
#
#   deploy/podman/build-images.sh            # base (once) + attnserve:latest-cpu + attnserve-prometheus:local
#   TARGETS="export-gpu" deploy/podman/build-images.sh   # the GPU image's repository (KIND_GPU)
#
# Tags: localhost/attnserve:${ATTNSERVE_IMAGE_TAG:-latest}-cpu (what docker-compose.cpu.yml names),
# -export-gpu for that stage, and localhost/attnserve-prometheus:local (compose.local.yml). The
# runtime-gpu target needs nvidia/cuda from a registry: build it with docker as the Dockerfile says. PYTHON the host
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
for target in ${TARGETS:-runtime-cpu prometheus}; do
  case "$target" in
    runtime-cpu|export|export-gpu)
      tag="localhost/attnserve:$TAG-${target#runtime-}"
      podman build --layers --format docker -f deploy/docker/Dockerfile --target "$target" \
        --build-arg "PYTHON_IMAGE=$BASE" "${PIP_ARGS[@]}" -t "$tag" . ;;
    prometheus)
      tag=localhost/attnserve-prometheus:local
      podman build --layers --format docker -f deploy/prometheus/Dockerfile \
        --build-arg "BASE_IMAGE=$BASE" -t "$tag" deploy/prometheus ;;
    *) echo "unknown target $target (runtime-cpu, export, export-gpu, prometheus)" >&2; exit 2 ;;
  esac
  podman image inspect --format "$tag {{.Size}}" "$tag"
done
