# The upstream echo services (service1, service2): labxds's echo server on port 8080.
# docker-compose.yaml sets each one's --name. Built from the repository root.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Same first layers as labxds.Dockerfile, so that Docker builds them once for both images.
WORKDIR /lab
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY pyproject.toml ./
COPY labxds/ labxds/
RUN pip install --no-deps . && useradd --create-home --uid 1000 lab

USER lab
EXPOSE 8080
CMD ["python", "-m", "labxds", "echo", "--name", "echo", "--port", "8080", "--host", "0.0.0.0"]
