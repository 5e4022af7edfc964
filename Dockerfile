# syntax=docker/dockerfile:1
# Tessera's image: the `tessera` command, with the node agent as the default.
#
#   docker build -t <registry>/tessera:0.1.0 .
#
# Two stages: the first builds wheels for Tessera and its runtime dependencies (no test or
# build tools reach the image); the second installs them into a slim Python 3.11. NVIDIA's
# driver files (libnvidia-ml, nvidia-smi, nvidia-cuda-mps-control) are not in the image: the
# NVIDIA Container Toolkit injects the node's own at start (the chart's runtimeClassName and
# NVIDIA_DRIVER_CAPABILITIES=compute,utility), so one image serves every driver version.
# For reproducible builds, pin the base image by digest (python:3.11-slim-bookworm@sha256:…).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# What the build backend reads: the project metadata, the README it names, the package.
COPY pyproject.toml README.md ./
COPY src/ src/
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tessera" \
      org.opencontainers.image.description="Node agent for NVIDIA GPUs in Kubernetes: MIG partitions, device plugin, time-slicing and MPS, feature labels, dcgm-exporter-compatible metrics." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels come in through a bind mount, so they leave no layer behind.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels tessera \
    && useradd --uid 65532 --user-group --create-home --home-dir /home/tessera tessera
# Non-root by default: `tessera exporter`, `tessera status`, `tessera mig show` and the
# simulator need no privilege. The node agent does (it changes MIG mode, resets GPUs, writes
# the kubelet's device-plugins directory, runs MPS daemons): the Helm chart's pod asks for
# root and a privileged container explicitly (securityContext in values.yaml).
USER 65532:65532
WORKDIR /home/tessera
ENTRYPOINT ["tessera"]
CMD ["agent"]
