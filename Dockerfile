# syntax=docker/dockerfile:1.7
# One image for every callhook process: `callhook ingress`, `callhook worker`, `callhook sim`.
#
#   docker build -t callhook:dev .
#   docker run --rm callhook:dev check-config worker
#
# Two stages: `build` resolves the environment strictly from uv.lock (`--frozen`: the lock is used as is and the
# build fails rather than re-resolving) into /app/.venv; `runtime` is a slim Python with only that virtualenv,
# running as an unprivileged user. aiortc, av, pylibsrtp and cryptography ship manylinux wheels with their native
# libraries bundled, so the runtime stage needs no compiler and no -dev packages.
# Versions are pinned (no floating `latest`): bump them deliberately, together with ./run's UV_VERSION.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /uvx /usr/local/bin/
# Compile bytecode at build time (the runtime filesystem is read-only in Kubernetes), copy instead of hard-linking
# out of the cache mount, and use the image's own interpreter: the venv's python must exist at the same path in
# the runtime stage, which has the same base image.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, from the lock file alone: this layer is reused until uv.lock or pyproject.toml change.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-project
# Then the project itself, installed as a regular (non-editable) package so /src is not needed at runtime.
COPY pyproject.toml uv.lock README.md ./
COPY callhook ./callhook
COPY ingress ./ingress
COPY worker ./worker
COPY simulator ./simulator
COPY console ./console
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable \
    && /app/.venv/bin/callhook --help >/dev/null

FROM ${PYTHON_IMAGE} AS runtime
ARG CALLHOOK_UID=10001
LABEL org.opencontainers.image.title="callhook" \
      org.opencontainers.image.description="WhatsApp Business voice calls: signed webhook ingress, RabbitMQ, WebRTC workers" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid "${CALLHOOK_UID}" callhook \
    && useradd --system --uid "${CALLHOOK_UID}" --gid "${CALLHOOK_UID}" --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin callhook
# Owned by root and not writable by the runtime user: the code cannot be modified by the process running it.
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1
WORKDIR /tmp
# Numeric user so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# 8080: ingress (webhooks, API, /healthz, /readyz, /metrics); 9100: worker (/healthz, /readyz, /metrics).
# Worker media is WebRTC over UDP on ephemeral ports, outbound only: nothing to expose.
EXPOSE 8080 9100
ENTRYPOINT ["callhook"]
CMD ["--help"]
