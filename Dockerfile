# One image for every grpc-helper service; the program(s) to run are chosen at run time
# (GRPC_HELPER_PROGRAMS, or the container command), under supervisord.
#
#   docker build -t grpc-helper .                                  # from the registry's python:3.11-slim
#   docker build --network none --build-arg BASE_IMAGE=grpc-helper-base:bookworm -t grpc-helper .
#                                # offline: base from scripts/build-base-image.sh, wheels in wheelhouse/
#
# Both bases are Debian bookworm with CPython 3.11; only the interpreter path differs
# (/usr/local/bin/python3 in python:3.11-slim, /usr/bin/python3 in the debootstrap base), hence
# `python3` from PATH here and the venv's own python at run time.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# Wheels from the build context when present (offline build), else the index: decided once, in
# a pip config file that every later pip call (build isolation included) reads
ENV PIP_CONFIG_FILE=/build/pip.conf \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY wheelhouse/ /wheelhouse/
COPY pyproject.toml /src/
# Dependencies first, in their own layer: source edits don't reinstall them. With them, the build backend
# (pyproject.toml's build-system: setuptools, wheel, also in the wheelhouse): an image built FROM this one
# installs a service's own package from its sources with `pip install --no-build-isolation`, offline
# (examples/greeter/Dockerfile)
RUN mkdir -p /build \
 && if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
        printf '[global]\nno-index = true\nfind-links = /wheelhouse\n' > "$PIP_CONFIG_FILE"; \
    else \
        printf '[global]\n' > "$PIP_CONFIG_FILE"; \
    fi \
 && python3 -c 'import tomllib; d = tomllib.load(open("/src/pyproject.toml", "rb")); p = d["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["deploy"] + p["optional-dependencies"]["otel"] + d["build-system"]["requires"]))' \
    > /build/requirements.txt \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -r /build/requirements.txt \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +
COPY README.md /src/
COPY protos /src/protos
COPY grpc_helper /src/grpc_helper
COPY services /src/services
RUN /opt/venv/bin/pip install "/src[deploy,otel]" \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
# System folder (mounted read-only), user folder, workspace root (a volume per service)
RUN useradd --uid 10001 --create-home --home-dir /home/grpc --shell /usr/sbin/nologin grpc \
 && mkdir -p /etc/grpc_helper /home/grpc/.config/grpc_helper /data/workspace \
 && chown -R grpc:grpc /home/grpc /data
COPY --from=build /opt/venv /opt/venv
COPY deploy/supervise.py /opt/grpc-helper/supervise.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRPC_HELPER_PROGRAMS=main
USER grpc
WORKDIR /data
# No EXPOSE: each service listens on its own GRPC_HELPER_PORT (compose.yaml exposes the right one)
# Checks the first program (the one on GRPC_HELPER_PORT)
HEALTHCHECK --interval=5s --timeout=5s --start-period=15s --retries=3 \
    CMD grpc-helper --host 127.0.0.1 --port "${GRPC_HELPER_PORT:-54321}" --timeout 3 health
# supervise.py is PID 1 and runs supervisord: `docker stop` (SIGTERM, forwarded) stops every program
# gracefully, within stopwaitsecs=40 — give `docker stop -t`/stop_grace_period more than that. A program
# supervisord gives up on (FATAL) makes the container exit with an error, for its restart policy to act
ENTRYPOINT ["/opt/venv/bin/python", "/opt/grpc-helper/supervise.py"]
