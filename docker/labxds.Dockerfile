# The control plane's container: JupyterLab with the lab's notebooks. The notebook kernel
# serves ADS on port 18000, which Envoy (the `proxy` service) reaches as control-plane:18000.
# Built by docker-compose.yaml from the repository root.
FROM python:3.11.14-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/lab

# Same first layers as echo.Dockerfile, so that Docker builds them once for both images
# (see there why labxds is imported from /lab rather than installed).
RUN useradd --create-home --uid 1000 lab
WORKDIR /lab
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY docker/healthcheck.py docker/
COPY labxds/ labxds/

COPY --chown=lab:lab notebooks/ notebooks/
USER lab
EXPOSE 8888 18000
# Healthy when JupyterLab (the container's main process) answers /api and, while a lesson serves
# ADS on 18000, that port speaks HTTP/2 (gRPC). Not "ADS is up": no lesson running is normal, and
# Envoy waits for the control plane by itself.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/lab/docker/healthcheck.py", "http://127.0.0.1:8888/api", "--h2-if-listening", "127.0.0.1:18000"]
# JupyterLab prints its http://127.0.0.1:8888/lab?token=... URL: see `docker compose logs control-plane`.
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--notebook-dir=/lab/notebooks"]
