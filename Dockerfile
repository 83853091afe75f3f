# Multi-stage: build a wheel-based virtualenv, then copy it into a slim,
# non-root runtime image.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/hub
COPY pyproject.toml README.md ./
COPY hub hub
COPY channels channels
COPY bots bots
COPY routing routing
COPY storage storage
RUN /opt/hub/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/hub/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /var/lib/hub --uid 10001 hub
COPY --from=build /opt/hub /opt/hub
COPY config.yaml /etc/crm-hub/config.yaml
ENV PATH=/opt/hub/bin:$PATH \
    HUB_CONFIG=/etc/crm-hub/config.yaml \
    HUB_DATA_DIR=/var/lib/hub/data \
    HUB_HOST=0.0.0.0 \
    HUB_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
USER hub
WORKDIR /var/lib/hub
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)" || exit 1
# Migrations first (idempotent; containers starting together take turns on a
# PostgreSQL advisory lock), then the requested role.
ENTRYPOINT ["sh", "-c", "crm-hub migrate && exec crm-hub serve \"$@\"", "crm-hub"]
CMD ["--role", "all"]
