#!/usr/bin/env bash
# Build the local base image `localhost/attnserve-base:bookworm` from Debian's archive, for hosts
# that cannot pull from an image registry: debootstrap a minimal bookworm with Debian's
# Python 3.11 (the same minor version as python:3.11-slim-bookworm, the Dockerfile's default
# base), tar it and `podman import` it. Every Dockerfile stage except runtime-gpu builds on it
# with --build-arg PYTHON_IMAGE=localhost/attnserve-base:bookworm.
#
#   deploy/podman/build-base.sh [IMAGE]        # ~3 min; skipped when IMAGE already exists
#
# Needs root (debootstrap), debootstrap and podman. MIRROR overrides the Debian mirror.
set -euo pipefail
IMAGE="${1:-localhost/attnserve-base:bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$(cd "$(dirname "$0")" && pwd)/containers.conf}"

if podman image exists "$IMAGE"; then
  echo "base image $IMAGE exists; nothing to do"
  exit 0
fi

ROOT="$(mktemp -d /var/tmp/attnserve-base.XXXXXX)"
trap 'rm -rf "$ROOT" "$ROOT.tar"' EXIT
# python3-venv gives `python3 -m venv` (every stage installs into /opt/venv: PEP 668 forbids pip
# into Debian's own interpreter); ca-certificates for pip over HTTPS; libgomp1 for ONNX Runtime
# and torch; passwd for useradd.
debootstrap --variant=minbase \
  --include=python3,python3-venv,ca-certificates,libgomp1,passwd \
  bookworm "$ROOT" "$MIRROR"
# Trim what an image never needs: apt lists and caches, docs, man pages.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/locale/*
tar -C "$ROOT" -c . -f "$ROOT.tar"
podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  "$ROOT.tar" "$IMAGE"
podman image inspect --format '{{.Id}} {{.Size}}' "$IMAGE"
