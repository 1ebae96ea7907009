# One image for every grpc-helper service; the program(s) to run are chosen at run time
# (GRPC_HELPER_PROGRAMS, or the container command), under supervisord.
#
#   docker build -t grpc-helper .                                  # from the registry's python:3.11-slim
#   docker build --network none --build-arg BASE_IMAGE=grpc-helper-base:bookworm -t grpc-helper .
#                                # offline: base from scripts/build-base-image.sh, wheels in wheelhouse/
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# Wheels from the build context when present (offline build), else from the index
COPY wheelhouse/ /wheelhouse/
COPY pyproject.toml README.md /src/
COPY protos /src/protos
COPY grpc_helper /src/grpc_helper
COPY services /src/services
RUN python3 -m venv /opt/venv \
 && if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
        /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse "/src[deploy]"; \
    else \
        /opt/venv/bin/pip install --no-cache-dir "/src[deploy]"; \
    fi \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
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
EXPOSE 54321
HEALTHCHECK --interval=5s --timeout=5s --start-period=15s --retries=3 \
    CMD grpc-helper --host 127.0.0.1 --port "${GRPC_HELPER_PORT:-54321}" --timeout 3 health
# supervisord is PID 1: `docker stop` (SIGTERM) stops every program gracefully
ENTRYPOINT ["/opt/venv/bin/python", "/opt/grpc-helper/supervise.py"]
