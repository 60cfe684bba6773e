# Prometheus from Debian's package, for the compose `monitoring` profile where the prom/prometheus
# image cannot be pulled (a closed network, or CI). Same command line as that image:
#   docker build -f deploy/docker/prometheus.Dockerfile -t kit-prometheus .
#   PROMETHEUS_IMAGE=kit-prometheus docker compose --profile monitoring up -d prometheus
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o nobody -g nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
