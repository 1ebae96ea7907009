#!/usr/bin/env bash
# Run the reference stack: a main proxying server (port 54321) and the proxied echo and notes
# sample services.
#
#   stack.sh up [--local] [--insecure] [--observability] [--scale SERVICE=N]
#                           set up and start it: Docker compose when an engine is reachable,
#                           otherwise (or with --local) local processes under supervisord (bound to
#                           loopback). Either runs mTLS on every hop with the authorization policy on
#                           (--insecure: plaintext, no policy, for debugging); --scale (Docker only,
#                           repeatable): run N replicas of a stateless service, e.g. --scale echo=3.
#                           Every service serves Prometheus metrics (/metrics: 9464 in its container;
#                           locally main's port + 3, + 4, + 5); --observability adds a Prometheus
#                           scraping them all (Docker: an image of Debian's package; local: Debian's
#                           prometheus, if installed), its UI and API on the host's loopback
#   stack.sh down           stop it (workspaces and secrets are kept: compose volumes, or .stack/)
#   stack.sh status         show what runs
#   stack.sh env            print the export lines pointing the grpc-helper CLI at main, with the
#                           operator's credentials (and GRPC_HELPER_PROMETHEUS_URL with --observability)
#   stack.sh secrets rotate renew the service certificates (running servers pick them up)
#
# Both modes use the same system/user config folders (deploy/system, deploy/user). Secrets (a private
# CA, a certificate per service, the operator's certificate and token, the policy) are created on first
# use in .stack/secrets (git-ignored, 0700, files 0600).
# END OF USAGE
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=${GRPC_HELPER_STACK_STATE:-$ROOT/.stack}   # local mode: workspaces, logs, supervisord files
MAIN_PORT=${GRPC_HELPER_MAIN_PORT:-54321}
# Main is asked on IPv4 loopback: the local stack binds it only, and with a Docker-picked port (0) Docker
# 20.10 may publish IPv4 and IPv6 on different ports, so `localhost` (::1 first) could reach another stack
MAIN_HOST=127.0.0.1
SECRETS=${GRPC_HELPER_STACK_SECRETS:-$STATE/secrets}
PROJECT=${COMPOSE_PROJECT_NAME:-grpc-helper}
# The Prometheus image of --observability: the grpc-helper image's name with -prometheus (build-prometheus-image.sh)
IMAGE=${GRPC_HELPER_IMAGE:-grpc-helper:latest}
export GRPC_HELPER_PROMETHEUS_IMAGE=${GRPC_HELPER_PROMETHEUS_IMAGE:-${IMAGE%%:*}-prometheus:latest}
# compose.yaml's `prometheus` service has the `observability` profile: known to every compose command here (status
# shows it, down stops it), started by `up` only with --observability (it names the services it starts)
export COMPOSE_PROFILES=observability

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
    until .venv/bin/grpc-helper --host "$MAIN_HOST" --port "$MAIN_PORT" --timeout 2 --json info echo notes 2>/dev/null \
        | .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); sys.exit(not all(i.get("proxy_port") for i in d["items"]))' 2>/dev/null
    do
        if [ $SECONDS -ge $deadline ]; then
            echo "stack: not ready after ${GRPC_HELPER_STACK_TIMEOUT:-180}s" >&2
            return 1
        fi
        sleep 1
    done
    .venv/bin/grpc-helper --host "$MAIN_HOST" --port "$MAIN_PORT" info
}

container_secrets() {
    # One folder per service, mounted read-only in its container (compose.yaml): its certificate and key,
    # the CA and the policy, owned by the containers' user (uid 10001) and readable by it only. Replaced
    # file by file (a rename each), so a running server picks a renewal up (rpc-tls-* files re-read).
    # Done as root in a throw-away container of the image, whoever runs this script: a user who is not
    # root could neither give the files to uid 10001 nor replace them once given.
    local out="$STATE/container-secrets"
    mkdir -p "$out"
    # shellcheck disable=SC2016  # expanded by the container's shell
    # Prometheus (--observability) gets its client certificate the same way, and no policy
    local script='set -eu
for svc in main echo notes prometheus; do
    mkdir -p "$2/$svc"
    chmod 0700 "$2/$svc"
    policy="policy.json:policy.json"
    [ "$svc" != prometheus ] || policy=""
    for pair in "$svc.crt:cert.pem" "$svc.key:key.pem" "ca.crt:ca.pem" $policy; do
        install -m 0600 -o 10001 -g 10001 "$1/${pair%%:*}" "$2/$svc/.${pair#*:}.tmp"
        mv -f "$2/$svc/.${pair#*:}.tmp" "$2/$svc/${pair#*:}"
    done
    chown 10001:10001 "$2/$svc"
done'
    docker run --rm --network none --user 0 --entrypoint sh -v "$SECRETS:/in:ro" -v "$out:/out" \
        "${GRPC_HELPER_IMAGE:-grpc-helper:latest}" -c "$script" sh /in /out
}

drop_container_secrets() {
    # The copies given to uid 10001 go with the stack (`up` makes them again): only root may remove them
    [ -d "$STATE/container-secrets" ] || return 0
    docker run --rm --network none --user 0 --entrypoint rm -v "$STATE:/state" "${GRPC_HELPER_IMAGE:-grpc-helper:latest}" \
        -rf /state/container-secrets || echo "stack: could not remove $STATE/container-secrets (owned by uid 10001)" >&2
}

secure_compose_env() {
    export GRPC_HELPER_STACK_SECRETS="$STATE/container-secrets" GRPC_HELPER_STACK_CLIENT_AUTH=required
    export GRPC_HELPER_STACK_CERT=/run/secrets/grpc-helper/cert.pem GRPC_HELPER_STACK_KEY=/run/secrets/grpc-helper/key.pem
    export GRPC_HELPER_STACK_CA=/run/secrets/grpc-helper/ca.pem GRPC_HELPER_STACK_POLICY=/run/secrets/grpc-helper/policy.json
}

up_docker() {
    bash scripts/build-image.sh
    local services=(main echo notes)
    if [ "$OBSERVABILITY" = 1 ]; then
        bash scripts/build-prometheus-image.sh
        services+=(prometheus)
        # Its scrape config: mTLS with its own client certificate, or plain HTTP for a plaintext stack
        export GRPC_HELPER_PROMETHEUS_CONFIG=compose.yml
        [ "$SECURE" = 1 ] || GRPC_HELPER_PROMETHEUS_CONFIG=compose-plaintext.yml
    fi
    if [ "$SECURE" = 1 ]; then
        container_secrets
        secure_compose_env
    fi
    GRPC_HELPER_MAIN_PORT=$MAIN_PORT compose up -d --no-build "${SCALE[@]}" "${services[@]}"
    # GRPC_HELPER_MAIN_PORT=0: Docker picked a free host port; read back the IPv4 one (see MAIN_HOST)
    MAIN_PORT=$(docker port "$(compose ps -q main)" 54321/tcp | sed -n 's/^0\.0\.0\.0://p' | head -n 1)
    if [ "$OBSERVABILITY" = 1 ]; then
        # Published on 127.0.0.1 (compose.yaml); GRPC_HELPER_PROMETHEUS_PORT=0: the port Docker picked
        local published
        published=$(docker port "$(compose ps -q prometheus)" 9090/tcp | sed -n 's/^127\.0\.0\.1://p' | head -n 1)
        echo "http://127.0.0.1:$published" > "$STATE/prometheus-url"
    fi
}

local_prometheus_config() {
    # The local stack's scrape config (deploy/prometheus/compose.yml's jobs, with the local ports and secrets): one
    # job per program, over mTLS with Prometheus's own certificate, each checking the name its server's carries
    local out="$STATE/prometheus.yml" name port tls
    {
        echo "# generated by scripts/stack.sh up --local --observability"
        echo "global: {scrape_interval: 15s}"
        echo "scrape_configs:"
        for name in main echo notes; do
            case $name in main) port=$METRICS_BASE ;; echo) port=$((METRICS_BASE + 1)) ;; notes) port=$((METRICS_BASE + 2)) ;; esac
            echo "  - job_name: $name"
            if [ "$SECURE" = 1 ]; then
                tls="{ca_file: $SECRETS/ca.crt, cert_file: $SECRETS/prometheus.crt, key_file: $SECRETS/prometheus.key"
                echo "    scheme: https"
                echo "    tls_config: $tls, server_name: $name}"
            fi
            echo "    static_configs: [{targets: ['127.0.0.1:$port']}]"
        done
    } > "$out"
    echo "$out"
}

wait_prometheus() {
    # Up when its API answers (bounded wait)
    local url=$1 deadline=$((SECONDS + ${GRPC_HELPER_STACK_TIMEOUT:-180}))
    until .venv/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/-/ready", timeout=2)' \
        "$url" 2>/dev/null
    do
        if [ $SECONDS -ge $deadline ]; then
            echo "stack: Prometheus not ready at $url after ${GRPC_HELPER_STACK_TIMEOUT:-180}s" >&2
            return 1
        fi
        sleep 1
    done
}

operator_env() {
    # The grpc-helper CLI's credentials for the secure stack (its options' environment variables)
    echo "export GRPC_HELPER_TLS_CA=$SECRETS/ca.crt GRPC_HELPER_TLS_CERT=$SECRETS/operator.crt" \
        "GRPC_HELPER_TLS_KEY=$SECRETS/operator.key GRPC_HELPER_TOKEN_FILE=$SECRETS/operator.token"
}

cli_env() {
    # Where the CLI finds main (the port Docker picked, when it did), and on the secure stack the operator's
    # credentials; first, the variables a previous stack may have left (a plaintext stack after a secure
    # one must not keep its TLS settings: every call would fail its handshake)
    echo "unset GRPC_HELPER_TLS_CA GRPC_HELPER_TLS_CERT GRPC_HELPER_TLS_KEY GRPC_HELPER_TLS_SERVER_NAME GRPC_HELPER_TOKEN_FILE"
    local line="export GRPC_HELPER_HOST=$MAIN_HOST GRPC_HELPER_PORT=$(cat "$STATE/port")"
    if [ -f "$STATE/secure" ]; then line="$line $(operator_env | sed 's/^export //')"; fi
    if [ -f "$STATE/prometheus-url" ]; then line="$line GRPC_HELPER_PROMETHEUS_URL=$(cat "$STATE/prometheus-url")"; fi
    echo "$line"
}

up_local() {
    # Same programs and config folders as the containers, as local processes under supervisord, bound to
    # loopback; secure: each program with its own certificate ({program}), mTLS and the policy
    local extra="-c rpc-main-port=$MAIN_PORT -c rpc-main-host=127.0.0.1 -c rpc-bind-address=127.0.0.1"
    if [ "$SECURE" = 1 ]; then
        extra="$extra -c rpc-tls-cert=$SECRETS/{program}.crt -c rpc-tls-key=$SECRETS/{program}.key"
        extra="$extra -c rpc-tls-ca=$SECRETS/ca.crt -c rpc-tls-client-auth=required -c rpc-auth-policy=$SECRETS/policy.json"
    fi
    local observe=()
    if [ "$OBSERVABILITY" = 1 ]; then
        if command -v prometheus >/dev/null 2>&1; then
            local port=${GRPC_HELPER_PROMETHEUS_PORT:-$((MAIN_PORT + 6))}
            observe=(--prometheus "$(local_prometheus_config):$port")
            echo "http://127.0.0.1:$port" > "$STATE/prometheus-url"
        else
            echo "stack: Debian's prometheus is not installed (apt-get install prometheus): nothing scrapes the metrics" >&2
        fi
    fi
    PATH="$ROOT/.venv/bin:$PATH" .venv/bin/python deploy/supervise.py --local --state "$STATE" \
        --program main:"$MAIN_PORT" --program echo:$((MAIN_PORT + 1)) --program notes:$((MAIN_PORT + 2)) \
        --system "$ROOT/deploy/system" --user "$ROOT/deploy/user" --workspace-root "$STATE/workspaces" \
        --metrics-port-base "$METRICS_BASE" "${observe[@]}" --extra-args "$extra"
}

case "${1:-}" in
    up)
        LOCAL=0 SECURE=1 OBSERVABILITY=0 SCALE=()
        set -- "${@:2}"
        while [ $# -gt 0 ]; do
            case "$1" in
                --local) LOCAL=1 ;;
                --insecure) SECURE=0 ;;
                --observability) OBSERVABILITY=1 ;;
                --scale)
                    [[ "${2:-}" =~ ^(echo)=[1-9][0-9]?$ ]] || { echo "stack: --scale echo=N (1-99): only echo is stateless" >&2; exit 2; }
                    SCALE+=(--scale "$2"); shift ;;
                *) echo "stack: unknown option $1" >&2; exit 2 ;;
            esac
            shift
        done
        bash scripts/dev-setup.sh   # the CLI and supervisord used below live in .venv
        mkdir -p "$STATE"
        rm -f "$STATE/prometheus-url"
        # Local programs' metrics ports: main's, echo's, notes' (they share one host)
        METRICS_BASE=${GRPC_HELPER_METRICS_PORT:-$((MAIN_PORT + 3))}
        if [ "$SECURE" = 1 ]; then
            .venv/bin/python scripts/stack_secrets.py create "$SECRETS"
            echo 1 > "$STATE/secure"
            eval "$(operator_env)"   # for wait_ready's CLI calls
        else
            rm -f "$STATE/secure"
        fi
        if [ "$LOCAL" = 0 ] && have_docker; then
            echo docker > "$STATE/mode"
            up_docker
        else
            echo local > "$STATE/mode"
            up_local
        fi
        echo "$MAIN_PORT" > "$STATE/port"
        wait_ready
        observed=""
        if [ -f "$STATE/prometheus-url" ]; then
            wait_prometheus "$(cat "$STATE/prometheus-url")"
            observed="; Prometheus on $(cat "$STATE/prometheus-url")"
        fi
        hint="eval \"\$(./scripts/stack.sh env)\"; .venv/bin/grpc-helper info"
        echo "stack: up ($(mode)$([ "$SECURE" = 1 ] && echo ', mTLS + policy' || echo ', plaintext')); main on $MAIN_HOST:$MAIN_PORT$observed — try: $hint"
        ;;
    env)
        [ -f "$STATE/port" ] || { echo "stack: not started (stack.sh up)" >&2; exit 1; }
        cli_env
        ;;
    secrets)
        [ "${2:-}" = rotate ] || { echo "usage: stack.sh secrets rotate" >&2; exit 2; }
        .venv/bin/python scripts/stack_secrets.py rotate "$SECRETS"
        if [ "$(mode)" = docker ] && [ -f "$STATE/secure" ]; then container_secrets; fi
        ;;
    down)
        if [ "$(mode)" = docker ]; then
            # Quiet when nothing runs (compose would say its network is not found)
            if [ -n "$(compose ps -q 2>/dev/null)" ] || docker network inspect "${PROJECT}_default" >/dev/null 2>&1; then
                # echo's replicas keep their workspaces in anonymous volumes: removed with them (a down/up
                # cycle must not leave volumes behind); main's and notes' named volumes are kept
                compose rm --stop --force -v echo >/dev/null
                compose down
            fi
            drop_container_secrets
        elif [ -S "$STATE/supervisor.sock" ]; then
            # supervisord stops every program with SIGTERM (graceful shutdown), then exits
            pid=$(cat "$STATE/supervisord.pid")
            .venv/bin/supervisorctl -c "$STATE/supervisord.conf" shutdown
            for _ in $(seq 300); do   # up to 60 s
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
        fi
        rm -f "$STATE/mode" "$STATE/port" "$STATE/prometheus-url"
        ;;
    status)
        if [ "$(mode)" = docker ]; then compose ps; else .venv/bin/supervisorctl -c "$STATE/supervisord.conf" status; fi
        ;;
    *)
        sed -n '2,/^# END OF USAGE/p' "$0" | sed '$d'   # the usage above, not the script
        exit 2
        ;;
esac
