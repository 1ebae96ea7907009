#!/usr/bin/env bash
# Run the reference stack: a main proxying server (port 54321) and the proxied echo and notes
# sample services.
#
#   stack.sh up [--local]   set up and start it: Docker compose when an engine is reachable,
#                           otherwise (or with --local) local processes under supervisord
#   stack.sh down           stop it (workspaces are kept: compose volumes, or .stack/)
#   stack.sh status         show what runs
#
# Both modes use the same system/user config folders (deploy/system, deploy/user).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=${GRPC_HELPER_STACK_STATE:-$ROOT/.stack}   # local mode: workspaces, logs, supervisord files
MAIN_PORT=${GRPC_HELPER_MAIN_PORT:-54321}
PROJECT=${COMPOSE_PROJECT_NAME:-grpc-helper}

compose() {
    # Compose v2 plugin when present, else docker-compose 1.29
    if docker compose version >/dev/null 2>&1; then
        docker compose -p "$PROJECT" -f "$ROOT/compose.yaml" "$@"
    else
        docker-compose -p "$PROJECT" -f "$ROOT/compose.yaml" "$@"
    fi
}

have_docker() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

mode() {
    # Whatever was started last decides what status/down act on
    if [ -f "$STATE/mode" ]; then cat "$STATE/mode"; elif have_docker; then echo docker; else echo local; fi
}

wait_ready() {
    # Up when main answers and both samples are registered on it (bounded wait)
    local deadline=$((SECONDS + ${GRPC_HELPER_STACK_TIMEOUT:-180}))
    until .venv/bin/grpc-helper --port "$MAIN_PORT" --timeout 2 --json info echo notes 2>/dev/null \
        | .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); sys.exit(not all(i.get("proxy_port") for i in d["items"]))'
    do
        if [ $SECONDS -ge $deadline ]; then
            echo "stack: not ready after ${GRPC_HELPER_STACK_TIMEOUT:-180}s" >&2
            return 1
        fi
        sleep 1
    done
    .venv/bin/grpc-helper --port "$MAIN_PORT" info
}

up_docker() {
    bash scripts/build-image.sh
    GRPC_HELPER_MAIN_PORT=$MAIN_PORT compose up -d --no-build
}

up_local() {
    # Same programs and config folders as the containers, as local processes under supervisord
    PATH="$ROOT/.venv/bin:$PATH" .venv/bin/python deploy/supervise.py --local --state "$STATE" \
        --program main:"$MAIN_PORT" --program echo:$((MAIN_PORT + 1)) --program notes:$((MAIN_PORT + 2)) \
        --system "$ROOT/deploy/system" --user "$ROOT/deploy/user" --workspace-root "$STATE/workspaces" \
        --extra-args "-c rpc-main-port=$MAIN_PORT -c rpc-main-host=127.0.0.1"
}

case "${1:-}" in
    up)
        bash scripts/dev-setup.sh   # the CLI and supervisord used below live in .venv
        mkdir -p "$STATE"
        if [ "${2:-}" != "--local" ] && have_docker; then
            echo docker > "$STATE/mode"
            up_docker
        else
            echo local > "$STATE/mode"
            up_local
        fi
        wait_ready
        echo "stack: up ($(mode)); main on localhost:$MAIN_PORT — try: .venv/bin/grpc-helper info"
        ;;
    down)
        if [ "$(mode)" = docker ]; then
            compose down
        elif [ -S "$STATE/supervisor.sock" ]; then
            # supervisord stops every program with SIGTERM (graceful shutdown), then exits
            pid=$(cat "$STATE/supervisord.pid")
            .venv/bin/supervisorctl -c "$STATE/supervisord.conf" shutdown
            for _ in $(seq 300); do   # up to 60 s
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
        fi
        rm -f "$STATE/mode"
        ;;
    status)
        if [ "$(mode)" = docker ]; then compose ps; else .venv/bin/supervisorctl -c "$STATE/supervisord.conf" status; fi
        ;;
    *)
        sed -n '2,12p' "$0"
        exit 2
        ;;
esac
