# widthwise, one Dockerfile for two images (build arguments pick the flavour):
#
#   CPU hosts (default): slim Python + the CPU build of torch + ONNX Runtime, which runs the
#   model 2-4x faster than eager torch on CPU.
#     docker build -t widthwise:cpu .
#
#   GPU hosts: the PyTorch CUDA runtime image (torch + CUDA + cuDNN); torch backend with
#   CUDA graphs. Without a visible GPU it falls back to eager torch on CPU (slow: use the CPU image).
#     docker build -t widthwise:gpu \
#       --build-arg BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime --build-arg FLAVOUR=gpu .
ARG BASE=python:3.11.11-slim-bookworm
FROM ${BASE}

ARG FLAVOUR=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WIDTHWISE_HOST=0.0.0.0 \
    WIDTHWISE_PORT=8000 \
    WIDTHWISE_GRPC_PORT=8001 \
    WIDTHWISE_CACHE_DIR=/var/cache/widthwise

WORKDIR /app

# Pinned dependencies first, so code changes do not invalidate this layer.
COPY deploy/docker/requirements*.txt /tmp/requirements/
RUN pip install --no-cache-dir --requirement "/tmp/requirements/requirements-${FLAVOUR}.txt" \
    && useradd --create-home --uid 10001 widthwise \
    && mkdir -p /var/cache/widthwise && chown 10001 /var/cache/widthwise

# The embedded default model ships inside the models package (models/default/).
COPY pyproject.toml README.md ./
COPY models ./models
COPY policies ./policies
COPY server ./server
RUN pip install --no-cache-dir --no-deps .

USER 10001
# HTTP (REST, KServe v2, /metrics) and KServe v2 gRPC, on Triton's ports
EXPOSE 8000 8001

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]

# exec form: SIGTERM reaches widthwise, which drains queued requests and exits 0.
CMD ["widthwise", "serve", "--host", "0.0.0.0", "--port", "8000"]
