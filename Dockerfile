# tollhouse image: `tollhouse serve` by default; the same image runs `tollhouse bill` and
# `tollhouse check-config`. Build from the repo root: docker build -t tollhouse:0.1.0 .
#
# Base pinned by tag and by the digest of its multi-architecture index (python 3.11.14, Debian
# 12 bookworm, slim). Bump both together.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# --- build: install the package and its dependencies into a venv ------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/tollhouse
COPY pyproject.toml README.md ./
# src/tollhouse/demo/envoy/ links to these (package data of `tollhouse demo`).
COPY envoy/sidecar.yaml envoy/sidecar-http.yaml ./envoy/
COPY src ./src
# `pip install .`: runtime dependencies only, no dev extras (no Envoy, pytest, mypy ...).
RUN /opt/tollhouse/bin/pip install --no-cache-dir . \
    && /opt/tollhouse/bin/tollhouse --help >/dev/null

# --- runtime: the venv, a numeric non-root user, nothing else ----------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/tollhouse/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 tollhouse \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tollhouse \
       --no-create-home --shell /usr/sbin/nologin tollhouse \
    && mkdir -p /etc/tollhouse /var/lib/tollhouse \
    && chown 10001:10001 /var/lib/tollhouse
COPY --from=build /opt/tollhouse /opt/tollhouse
WORKDIR /var/lib/tollhouse
USER 10001:10001
# 9001: gRPC (ext_authz Check, access-log service, grpc.health.v1, reflection)
# 9002: HTTP admin (/metrics, /healthz, /readyz)
EXPOSE 9001 9002
# For plain Docker; Kubernetes ignores it and uses the probes in k8s/base/deployment.yaml
# (gRPC health on 9001, /readyz on 9002). Assumes admin_listen on port 9002.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9002/healthz', timeout=2)"]
# SIGTERM (the default stop signal) starts the drain: in-flight Checks finish, the spool is
# flushed, within shutdown_grace_s.
ENTRYPOINT ["tollhouse"]
CMD ["serve", "--config", "/etc/tollhouse/config.yaml"]
