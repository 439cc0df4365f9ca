# syntax=docker/dockerfile:1
# The trainer image: `senti retrain`, the Prefect worker of the `senti` pool, and the team
# stack's `mlflow server` and `prefect server` (the very MLflow and Prefect the clients pin).
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t senti-trainer .
#
# The image holds the environment (every package pinned by constraints.txt). The project a
# worker retrains is a git checkout mounted at /srv/senti: PYTHONPATH puts its src/ and flows/
# first, so the code DVC's stages run is the code dvc.yaml hashes, not the copy installed here.
#
# Base image: tag and digest. No container engine ran here; the digest is the one public
# projects pull for this tag. Refresh: docker buildx imagetools inspect python:3.11.15-slim-bookworm
FROM python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    GX_ANALYTICS_ENABLED=False \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PYTHONPATH=/srv/senti/src:/srv/senti

# git: DVC and the lineage record read the checkout's repository
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/senti
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
COPY flows ./flows
RUN pip install -c constraints.txt ".[team]"

# a fixed non-root user; the volumes' mount points belong to it
RUN useradd --create-home --uid 10001 --user-group senti \
    && mkdir -p /srv/senti /var/lib/mlflow-auth \
    && chown senti:senti /srv/senti /var/lib/mlflow-auth
USER 10001:10001
WORKDIR /srv/senti

# each service of docker/compose.yaml sets its own command and health check
CMD ["senti", "--help"]
