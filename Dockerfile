# certrenew in a container beside HAProxy: `certrenew daemon` as an unprivileged user.
# See docs/deploying.md#container, and examples/compose/ for the HAProxy side.

# Build stage: install certrenew and its dependencies into a virtualenv; only the
# virtualenv is copied out, so no source, pip cache or build dependency stays behind.
FROM python:3.11-slim-bookworm AS build
RUN python -m venv /opt/certrenew
COPY pyproject.toml README.md /src/
COPY certrenew /src/certrenew
RUN /opt/certrenew/bin/pip install --no-cache-dir /src

FROM python:3.11-slim-bookworm
# A fixed UID, so volumes (and the HAProxy container of the compose example, which runs
# as the same UID to read the 0600 bundles and share the admin socket) can be owned by it.
# /var/run/haproxy is where the compose example mounts the volume holding HAProxy's admin
# socket: a fresh named volume takes this ownership, so HAProxy can create its socket there.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/certrenew --no-create-home \
        --shell /usr/sbin/nologin certrenew \
    && install -d -o certrenew -g certrenew -m 0700 /var/lib/certrenew \
    && install -d -o certrenew -g certrenew -m 0755 /etc/haproxy/ssl /var/run/haproxy \
    && install -d -m 0755 /etc/certrenew
COPY --from=build /opt/certrenew /opt/certrenew

# Settings by CERTRENEW_* variables (they override the TOML file); the certificates
# themselves are listed in /etc/certrenew/certrenew.toml, mounted read-only.
# The responder on TCP (not the default unix socket): HAProxy runs in another container,
# and no other user runs in this one to take the port.
ENV PATH=/opt/certrenew/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CERTRENEW_STATE_DIR=/var/lib/certrenew \
    CERTRENEW_SSL_DIR=/etc/haproxy/ssl \
    CERTRENEW_LISTEN=0.0.0.0:49494
# /metrics and /healthz, set here rather than on the command line so that CERTRENEW_METRICS_LISTEN
# (compose's `environment:`) moves it like any other setting; the HEALTHCHECK follows it.
ENV CERTRENEW_METRICS_LISTEN=0.0.0.0:9797
VOLUME ["/var/lib/certrenew", "/etc/haproxy/ssl"]
# 49494: the HTTP-01 responder, for HAProxy's letsencrypt_backend only.
# 9797: /metrics and /healthz; never publish it to the internet.
EXPOSE 49494 9797
USER 10001:10001
HEALTHCHECK --interval=60s --timeout=10s --start-period=5m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; host, _, port = os.environ['CERTRENEW_METRICS_LISTEN'].rpartition(':'); host = {'0.0.0.0': '127.0.0.1', '[::]': '[::1]'}.get(host, host); urllib.request.urlopen(f'http://{host}:{port}/healthz', timeout=5)"]
ENTRYPOINT ["certrenew"]
CMD ["daemon"]
