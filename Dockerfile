# syntax=docker/dockerfile:1
# One image for both components. The chart runs `navarch-agent run` in the DaemonSet and
# `navarch-operator` in the Deployment; the default command is the operator. It holds the
# runtime only: .dockerignore keeps the sim extra's tooling (navarch/sim, navarch/testing,
# navarch/demo.py) out of the build context, so navarch-sim here says which extra it needs.
#
# Bases are pinned by tag. Pin them by digest as well where you build and publish
# (`docker buildx imagetools inspect python:3.11.13-slim-bookworm`): the machines this
# file was written on have no container engine or registry access to read the digest.
# 3.11 is the interpreter the test suite runs on.
ARG PYTHON_VERSION=3.11.13
ARG DEBIAN=bookworm

# Builder: the full image has a compiler, in case a dependency has no wheel for the target
# platform. It only produces wheels.
FROM python:${PYTHON_VERSION}-${DEBIAN} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY navarch ./navarch
RUN pip wheel --wheel-dir /wheels .

# Runtime: slim, no compiler, no build tools; installs only the wheels built above.
FROM python:${PYTHON_VERSION}-slim-${DEBIAN}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels navarch \
    && pip uninstall --yes pip setuptools wheel \
    && groupadd --system --gid 65532 navarch \
    && useradd --system --uid 65532 --gid 65532 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin navarch
# Numeric, so Kubernetes can verify runAsNonRoot. The agent's pod overrides it with uid 0
# only to hold CAP_SYSLOG (see charts/navarch/templates/agent.yaml).
USER 65532:65532
LABEL org.opencontainers.image.title="navarch" \
      org.opencontainers.image.description="Keeps unhealthy NVIDIA GPU nodes out of the Kubernetes schedule" \
      org.opencontainers.image.licenses="Apache-2.0"
CMD ["navarch-operator"]
