# syntax=docker/dockerfile:1.7
# The operator image: kopf + lightkube + prometheus-client, never torch (`pip install .[operator]`).
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t ghcr.io/deepseek-operator/operator:0.1.0 .
# Every Python package is pinned by requirements/lock.txt (used as a constraints file, so only the operator
# extra's dependencies are installed, at the locked versions).

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    VIRTUAL_ENV=/opt/venv
WORKDIR /src
RUN uv venv /opt/venv
# Dependencies first (cached while only the source changes).
COPY requirements/lock.txt requirements/lock.txt
COPY pyproject.toml README.md ./
COPY docker/build-constraints.txt docker/build-constraints.txt
COPY operator operator
COPY workers workers
COPY tools/testbed tools/testbed
# A regular (not editable) install of the operator extra, constrained to the lock file's versions.
RUN uv pip install --no-cache --constraint requirements/lock.txt --build-constraint docker/build-constraints.txt ".[operator]" \
    && /opt/venv/bin/python -c "import deepseek_operator.main" \
    && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then echo "torch must not be in the operator image" >&2; exit 1; fi

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="deepseek-operator" \
      org.opencontainers.image.description="DeepSeek Operator: reconciles DeepSeekTraining and DeepSeekInference resources" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /opt/venv /opt/venv
# Non-root (the same numeric id the chart's securityContext uses); the root filesystem can be read-only:
# bytecode is compiled at build time and nothing writes outside /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["deepseek-operator"]
CMD ["--log-format=json"]
