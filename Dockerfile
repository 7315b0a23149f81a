# dotdo in a container: one node, serving on 8787 (HTTP) and 8788 (transport).
#
#   docker build -t dotdo .
#   docker run --rm -p 8787:8787 -v dotdo-data:/data dotdo
#
# compose.yaml runs three of these as a cluster. Tokens come from the environment
# (DOTDO_TOKEN, DOTDO_ADMIN_TOKEN), never from the command line.

# -- build: the project and its dependencies in a virtual environment ------------------
FROM python:3.12-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# What building the project reads (pyproject.toml's package-dir), nothing else.
COPY pyproject.toml README.md ./
COPY dotdo/ dotdo/
COPY actors/ actors/
COPY runtime/ runtime/
COPY storage/ storage/
RUN python -m venv /opt/dotdo \
    && /opt/dotdo/bin/pip install --no-cache-dir . \
    && /opt/dotdo/bin/python -c "import dotdo"

# -- runtime: the environment alone, run by an unprivileged user -----------------------
FROM python:3.12-slim

ENV PATH=/opt/dotdo/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN groupadd --system --gid 10001 dotdo \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin dotdo \
    && mkdir -p /data \
    && chown 10001:10001 /data

COPY --from=build /opt/dotdo /opt/dotdo

# The data directory: a volume, owned by the user before it is declared, so that a new
# named volume starts out writable by it.
VOLUME ["/data"]
# Modules of an image built FROM this one go here (dotdo serve app.py); read-only to the user.
WORKDIR /app

USER 10001:10001

# 8787: HTTP; 8788: the msgpack/TCP transport other nodes call (HTTP port + 1).
EXPOSE 8787 8788

# Slim images have no curl: Python's urllib. /_health needs no token.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8787/_health', timeout=4).status == 200 else 1)"]

# SIGTERM (docker stop) stops it cleanly: a cluster node first hands its slots to the others
# (--drain-timeout), then in-flight calls finish (--shutdown-grace), and it exits 0. Give
# docker stop the time for both (-t; compose.yaml: stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["dotdo", "serve", "--host", "0.0.0.0", "--data", "/data"]
