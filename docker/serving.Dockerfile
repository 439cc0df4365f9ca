# syntax=docker/dockerfile:1
# The scoring server: `senti serve` of the registry's @champion (MLflow's model server,
# POST /invocations). It needs only params.yaml (the model's name) and a tracking server
# (MLFLOW_TRACKING_URI, with MLFLOW_TRACKING_USERNAME/PASSWORD): the model, its code and its
# artifacts come from the registry. The champion is resolved at start: restart after a promotion.
# Build from the repository root:  docker build -f docker/serving.Dockerfile -t senti-serving .
#
# Base image: tag and digest, as in trainer.Dockerfile.
FROM python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

# a fixed non-root user
RUN useradd --create-home --uid 10001 --user-group senti

WORKDIR /opt/senti
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
COPY flows ./flows
RUN pip install -c constraints.txt ".[team]"

COPY --chown=10001:10001 params.yaml /srv/senti/params.yaml
COPY --chown=10001:10001 config /srv/senti/config
USER 10001:10001
WORKDIR /srv/senti

EXPOSE 5001
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5001/ping', timeout=4)"]
CMD ["senti", "serve", "--host", "0.0.0.0", "--port", "5001", "--root", "/srv/senti"]
