# xoauth2-relay as a container: a sidecar that legacy apps reach over SMTP (2525) and POP3 (1110).
#
#   docker build -t xoauth2-relay .
#   docker run -d -v ./relay.yaml:/config/relay.yaml:ro -v relay-data:/data -p 127.0.0.1:2525:2525 xoauth2-relay
#
# Behind a TLS-intercepting corporate proxy, hand its CA bundle to pip as a build secret (nothing
# of it stays in the image):
#   docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt -t xoauth2-relay .
# Another base image (a local mirror, a Debian image with python3 + python3-venv):
#   docker build --build-arg PYTHON_IMAGE=registry.example.com/python:3.12-slim -t xoauth2-relay .
# Podman: add `--format docker`, or the OCI format silently drops the HEALTHCHECK.

ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
# The pip_cert secret is optional: without it pip uses the image's own CA bundle.
RUN --mount=type=secret,id=pip_cert,required=false \
    python3 -m venv /opt/relay \
 && if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
 && /opt/relay/bin/pip install /src \
 && /opt/relay/bin/relay --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="xoauth2-relay" \
      org.opencontainers.image.description="Local SMTP/POP3 relay: plain logins in, OAuth 2.0 XOAUTH2 out" \
      org.opencontainers.image.licenses="MIT"
ENV PATH=/opt/relay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RELAY_CONFIG=/config/relay.yaml
COPY --from=build /opt/relay /opt/relay
COPY docs/docker/relay.yaml /opt/relay/share/relay.example.yaml
# An unprivileged user that owns only the token store volume.
RUN useradd --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin relay \
 && mkdir -p /config /data \
 && chown relay:relay /data \
 && chmod 0700 /data
USER relay
WORKDIR /data
VOLUME ["/data"]
EXPOSE 2525 1110 9025
# `relay health` exits 0 when every enabled listener greets (220 / +OK) within its timeout; with an
# admin listener configured, when /readyz says ready (listeners, token store, every grant usable).
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s --retries=3 \
    CMD ["relay", "health", "--config", "/config/relay.yaml"]
ENTRYPOINT ["relay"]
CMD ["serve", "--config", "/config/relay.yaml"]
