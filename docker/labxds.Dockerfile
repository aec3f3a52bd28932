# The control plane's container: JupyterLab with the lab's notebooks. The notebook kernel
# serves ADS on port 18000, which Envoy (the `proxy` service) reaches as control-plane:18000.
# Built by docker-compose.yaml from the repository root.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Same first layers as echo.Dockerfile, so that Docker builds them once for both images.
WORKDIR /lab
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY pyproject.toml ./
COPY labxds/ labxds/
RUN pip install --no-deps . && useradd --create-home --uid 1000 lab

COPY --chown=lab:lab notebooks/ notebooks/
USER lab
EXPOSE 8888 18000
# JupyterLab prints its http://127.0.0.1:8888/lab?token=... URL: see `docker compose logs control-plane`.
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--notebook-dir=/lab/notebooks"]
