# One image for every service; the command picks the service:
#   docker run IMAGE python -m services.twilio_edge | services.transcoder | services.realtime_worker
#   | services.console | services.recorder
#   (and python -m sim.openai_realtime for the emulator)
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY sim ./sim
COPY tools ./tools
COPY bench ./bench
RUN pip install . && useradd --system --uid 10001 gateway
USER gateway
EXPOSE 8080 8090 9100
CMD ["python", "-m", "services.twilio_edge"]
