# The render worker image: a CUDA runtime base, torch with CUDA, the project from its own
# pyproject.toml, and flash-attn only when FLASH_ATTN=true. Model weights are never in the
# image: mount checkpoints/ read-only at /app/checkpoints. Build from the repository root (the
# context is filtered by worker.Dockerfile.dockerignore):
#
#   docker build -f docker/worker.Dockerfile -t longtake-worker .
#   docker build -f docker/worker.Dockerfile --build-arg FLASH_ATTN=true -t longtake-worker .
#   docker build -f docker/worker.Dockerfile -t longtake-worker:cpu \
#     --build-arg BASE_IMAGE=debian:bookworm-slim \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# torch: PyPI's Linux x86-64 wheels of torch 2.13 are CUDA 13 builds that bring their CUDA
# libraries as nvidia-* wheels, so the host needs an NVIDIA driver that supports CUDA 13 and
# the NVIDIA Container Toolkit. For an older driver, point TORCH_INDEX_URL at the PyTorch index
# of an older CUDA (https://download.pytorch.org/whl/cu128, ...) and BASE_IMAGE / BUILD_IMAGE at
# the matching nvidia/cuda tags.
#
# flash-attn is optional at run time (attention falls back to PyTorch SDPA). It is compiled
# here against this torch in the CUDA devel image, which takes a long time; MAX_JOBS bounds the
# compiler's parallelism (and its memory, several GB per job).

ARG BASE_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
ARG BUILD_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu24.04
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG FLASH_ATTN=false
ARG FLASH_ATTN_VERSION=2.8.3
ARG MAX_JOBS=4

# ---- flash-attn: a wheel built against this torch, or nothing. `FROM flash-attn-${FLASH_ATTN}`
# picks one of the two stages; BuildKit (Docker's builder since 23.0) builds only the stages the
# target needs.
FROM ${BUILD_IMAGE} AS flash-attn-true
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ARG FLASH_ATTN_VERSION
ARG MAX_JOBS
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && pip install packaging psutil ninja setuptools wheel
RUN MAX_JOBS="${MAX_JOBS}" pip wheel --no-build-isolation --no-deps --wheel-dir /wheels \
      "flash-attn==${FLASH_ATTN_VERSION}"

FROM ${BASE_IMAGE} AS flash-attn-false
RUN mkdir /wheels

FROM flash-attn-${FLASH_ATTN} AS flash-attn

# ---- the worker
FROM ${BASE_IMAGE} AS worker
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# espeak-ng: the API speaks a job's script at submit (docs/speech.md), and this image serves
# the API where it renders in process (`longtake serve --embedded`) or runs the `api` role
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates espeak-ng \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

# torch first, pinned, from the index with the wanted build (CUDA or CPU); the constraint keeps
# the project's requirements from replacing it with another build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && echo "torch==${TORCH_VERSION}" > /opt/venv/constraints.txt

# Third-party requirements from pyproject.toml alone (cached across source changes), with the
# cuDNN frontend: the precision fp8-attention's kernel (a worker on another GPU never loads it).
COPY pyproject.toml /src/pyproject.toml
COPY docker/requirements.py /src/docker/requirements.py
RUN python /src/docker/requirements.py /src/pyproject.toml --extra cudnn > /tmp/requirements.txt \
 && pip install -c /opt/venv/constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY --from=flash-attn /wheels /tmp/wheels
RUN if ls /tmp/wheels/*.whl > /dev/null 2>&1; then pip install --no-deps /tmp/wheels/*.whl; fi \
 && rm -rf /tmp/wheels

# The project itself.
COPY . /src
RUN pip install --no-deps /src \
 && install -d -m 0755 /app/docker \
 && install -m 0755 /src/docker/entrypoint.sh /app/docker/entrypoint.sh \
 && install -m 0644 /src/docker/healthcheck.py /src/docker/celery_cli.py /app/docker/ \
 && rm -rf /src

# An unprivileged user. /app/checkpoints is the mount point of the weights (read-only), the
# default LONGTAKE_MODEL_DIR (`checkpoints` under the working directory).
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/longtake longtake \
 && install -d -o longtake -g longtake /app/var \
 && install -d -m 0755 /app/checkpoints
WORKDIR /app
USER longtake

# SIGTERM starts Celery's warm shutdown: the running render gets LONGTAKE_SOFT_SHUTDOWN_TIMEOUT_S
# to checkpoint and release its job. Give `docker stop` a longer timeout than that.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
  CMD ["python", "/app/docker/healthcheck.py", "worker"]
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["worker"]
