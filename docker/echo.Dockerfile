# The upstream echo services (service1, service2): labxds's echo server on port 8080.
# docker-compose.yaml sets each one's --name. Built from the repository root.
FROM python:3.11.14-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/lab

# Same first layers as labxds.Dockerfile, so that Docker builds them once for both images:
# the unprivileged user, then requirements.txt's pinned packages, then labxds itself, imported
# from /lab (PYTHONPATH) rather than installed, so that no unpinned build backend is fetched.
RUN useradd --create-home --uid 1000 lab
WORKDIR /lab
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY docker/healthcheck.py docker/
COPY labxds/ labxds/

USER lab
EXPOSE 8080
# Healthy when the echo answers a GET on its own port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "/lab/docker/healthcheck.py", "http://127.0.0.1:8080/"]
CMD ["python", "-m", "labxds", "echo", "--name", "echo", "--port", "8080", "--host", "0.0.0.0"]
