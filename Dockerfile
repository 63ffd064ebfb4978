# The monitor's image: `delivery-monitor worker|ingress|demo|replay|inspect ...`.
#   docker build -t whatsapp-delivery-monitor .
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=kafka:9092 -p 6066:6066 whatsapp-delivery-monitor
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
RUN pip install . \
    && useradd --create-home --uid 10001 monitor \
    && mkdir -p /data \
    && chown monitor /data

USER monitor
# Inside a container the worker's API and the ingress listen on every interface; the table
# store (rocksdb) lives in /data (mount a volume there to keep it across restarts).
ENV DELIVERY_MONITOR_DATA_DIR=/data \
    DELIVERY_MONITOR_WEB_HOST=0.0.0.0 \
    DELIVERY_MONITOR_INGRESS_HOST=0.0.0.0
EXPOSE 6066 8080
ENTRYPOINT ["delivery-monitor"]
CMD ["worker"]
