# The API image: the HTTP API, the outbox relay and lease reaper, and migrations, installed
# from the project's own pyproject.toml. It has no torch: docker/requirements.py says why.
# Build from the repository root (the context is filtered by api.Dockerfile.dockerignore):
#
#   docker build -f docker/api.Dockerfile -t longtake-api .
#   docker build -f docker/api.Dockerfile --target flower -t longtake-flower .
#
# Roles (docker/entrypoint.sh): api (default), relay, migrate, flower, health ROLE, or any
# command. Configuration: LONGTAKE_* variables, and AWS_* for S3 credentials.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# espeak-ng: the API speaks the scripts of jobs sent as text, at submit (docs/speech.md)
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends espeak-ng \
 && rm -rf /var/lib/apt/lists/* \
 && python -m venv /opt/venv

# Third-party requirements first, from pyproject.toml alone, so that a change to the source
# does not reinstall them. --api leaves out the model stack (torch, diffusers, transformers, ...).
COPY pyproject.toml /src/pyproject.toml
COPY docker/requirements.py /src/docker/requirements.py
RUN python /src/docker/requirements.py /src/pyproject.toml --api > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The project itself; --no-deps, or pip would bring the model stack back.
COPY . /src
RUN pip install --no-deps /src \
 && install -d -m 0755 /app/docker \
 && install -m 0755 /src/docker/entrypoint.sh /app/docker/entrypoint.sh \
 && install -m 0644 /src/docker/healthcheck.py /src/docker/celery_cli.py /app/docker/ \
 && rm -rf /src

# An unprivileged user; /app/var is where `serve --embedded` keeps its SQLite file and objects.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/longtake longtake \
 && install -d -o longtake -g longtake /app/var
WORKDIR /app
USER longtake

# Listen on every interface of the container, on LONGTAKE_PORT (8000 unless set).
ENV LONGTAKE_HOST=0.0.0.0
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
  CMD ["python", "/app/docker/healthcheck.py", "api"]
ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["api"]

# Flower, Celery's web monitor, on the same image (compose: the `monitoring` profile). It is
# not a dependency of the project, so only this stage installs it.
FROM base AS flower
USER root
RUN pip install "flower>=2.0,<3"
USER longtake
EXPOSE 5555
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["python", "/app/docker/healthcheck.py", "url", "http://127.0.0.1:5555/healthcheck"]
CMD ["flower", "--port=5555"]

# The default target (the last stage): the API image.
FROM base AS api
