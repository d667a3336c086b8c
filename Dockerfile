# Image serving the generation predictor with Cog's HTTP server (CPU; the GPU image is
# built from cog.yaml). Weights live under /app/weights, mountable as a volume.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    LORA_STUDIO_WEIGHTS=/app/weights \
    COG_PREDICT_TYPE_STUB=predict_generate.py:Predictor \
    PORT=5000

RUN useradd --create-home --uid 1000 app
WORKDIR /app
COPY requirements.txt pyproject.toml ./
RUN pip install -r requirements.txt
COPY --chown=app:app . .
RUN pip install --no-deps .

USER app
VOLUME ["/app/weights"]
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD python -c "import sys, urllib.request; sys.exit(0 if b'READY' in urllib.request.urlopen('http://127.0.0.1:5000/health-check').read() else 1)"
CMD ["python", "-m", "cog.server.http", "--host", "0.0.0.0"]
