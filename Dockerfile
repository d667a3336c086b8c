# The whole service in one image: the Replicate-style API, its web pages and, unless LORA_STUDIO_WORKERS
# points at GPU containers, one local Cog worker per model (CPU torch: right for the tiny base).
# GPU workers are not built from this file: they are the Cog images of cog.yaml and cog-train.yaml.
# docs/deploy.md: building, running, and refreshing the pinned base image (tag and digest together).
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# torch comes from this index at the version requirements.txt pins: CPU wheels, a tenth of PyPI's CUDA
# build, since the service never needs a GPU. https://download.pytorch.org/whl/cu128 runs local workers on one.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LORA_STUDIO_HOST=0.0.0.0 \
    LORA_STUDIO_PORT=8000 \
    LORA_STUDIO_DATA_DIR=/data \
    LORA_STUDIO_WEIGHTS=/app/weights

# tini as PID 1: forwards SIGTERM to the service and reaps the Cog worker processes it starts
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/*

# Dependencies before the source, so a code change reuses this layer. The venv's bin is first on PATH:
# Cog's server starts its predictor process as `python` from PATH.
WORKDIR /app
COPY requirements.txt requirements-service.txt ./
RUN python -m venv /opt/venv \
 && pip install --no-deps --index-url "$TORCH_INDEX_URL" "$(grep -E '^torch==' requirements.txt)" \
 && pip install -r requirements-service.txt

# The app user owns only what it writes: the data folder (SQLite, files, worker folders, LoRA cache when
# DATABASE_URL/STORAGE_URL are not set) and the weights volume (`lora-studio weights fetch` fills it).
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/app app \
 && mkdir -p /data /app/weights \
 && chown 10001:10001 /data /app/weights

COPY pyproject.toml README.md predict_generate.py predict_train.py ./
COPY .cog/ ./.cog/
COPY lora_core/ ./lora_core/
COPY --chown=10001:10001 weights/tiny-sd/ ./weights/tiny-sd/
COPY --chown=10001:10001 weights/tiny-sdxl/ ./weights/tiny-sdxl/
# Editable on purpose: lora_core finds .cog/, predict_*.py and weights/ beside itself (REPO_ROOT).
RUN pip install --no-deps -e .

USER 10001:10001
# A new named volume starts as a copy of the image's folder, so weights/ begins with the tiny bases.
VOLUME ["/data", "/app/weights"]
EXPOSE 8000
# GET /health touches no database: what load balancers and this check poll.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LORA_STUDIO_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["tini", "--"]
CMD ["lora-studio", "serve"]
