# One image for every service; the command picks the service:
#   docker run IMAGE python -m services.twilio_edge | services.transcoder | services.realtime_worker
#   | services.console | services.recorder
#   (and python -m sim.openai_realtime for the emulator)
# BASE_IMAGE: any Debian-like image with python3 (3.11+) and its venv module. With a registry,
# the default; without one, `make images` makes voice-gateway-base from Debian's packages and
# builds with --build-arg BASE_IMAGE=voice-gateway-base:bookworm.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# The package index pip uses inside the build (make images passes the host's when it is not PyPI).
# Build arguments stay in this stage's history, which the final image does not carry.
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_INDEX_URL=${PIP_INDEX_URL} \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# A build machine's local CAs (containers/build-ca/README.md), trusted by this stage alone.
COPY containers/build-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
RUN python3 -m venv /opt/venv
WORKDIR /src
# The dependencies first, in a layer of their own: a change to the code reinstalls only the code.
# They are uv.lock's exact versions, checked against its hashes (docs/install.md): uv (pinned by
# hash itself) lists the service's packages out of the lock, and pip installs them from the
# build's package index.
COPY requirements-uv.txt pyproject.toml uv.lock ./
RUN python3 -m venv /opt/uv \
 && /opt/uv/bin/pip install -q --require-hashes -r requirements-uv.txt \
 && UV_PYTHON_DOWNLOADS=never UV_NO_CACHE=1 /opt/uv/bin/uv export --frozen --no-dev --extra emulator --no-emit-project \
      --format requirements-txt --quiet -o requirements.txt \
 && /opt/venv/bin/pip install -q --require-hashes --no-deps -r requirements.txt
COPY README.md ./
COPY shared ./shared
COPY services ./services
COPY sim ./sim
COPY tools ./tools
COPY bench ./bench
# Every dependency is a wheel, so no compiler is needed; pip itself is not needed at run time.
RUN /opt/venv/bin/pip install . --no-deps -q \
 && /opt/venv/bin/pip uninstall -q -y pip setuptools

FROM ${BASE_IMAGE}
# The settings before the one big layer: under Docker's vfs storage driver every step copies the
# whole file system, so the small steps are cheaper on the smaller one.
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway
# /metrics and /healthz (METRICS_PORT) for the orchestrator's probes and Prometheus, which reach
# the container from outside it (the settings' default, for make run, is loopback).
ENV METRICS_HOST=0.0.0.0
WORKDIR /app
EXPOSE 8080 8090 9100
CMD ["python", "-m", "services.twilio_edge"]
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
