#!/usr/bin/env bash
# Builds a Debian base image for the kit's Dockerfiles without any image registry: debootstrap
# from Debian's archive, then `docker import`. For closed networks and CI, where python:3.11-slim
# and debian:bookworm-slim cannot be pulled. Needs root, debootstrap and a Docker engine.
#   deploy/docker/debian-base.sh [IMAGE]        (default kit-debian-base:bookworm)
# What the kit's images need from it: Python 3.11 with venv, libpython3.11 (Triton's Python
# backend stub links against it), CA certificates for pip, and apt sources for the Prometheus image.
set -euo pipefail
image=${1:-kit-debian-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rootfs=$(mktemp -d "${TMPDIR:-/tmp}/kit-debian-base.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $mirror into $rootfs (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,libpython3.11,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$image" >/dev/null
echo "built $image"
