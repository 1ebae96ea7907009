#!/usr/bin/env bash
# Run the reference stack: a main proxying server (port 54321) and the proxied echo and notes
# sample services.
#
#   stack.sh up [--local] [--insecure] [--observability] [--scale SERVICE=N] [-f FILE]...
#                           set up and start it: Docker compose when an engine is reachable,
#                           otherwise (or with --local) local processes under supervisord (bound to
#                           loopback). Either runs mTLS on every hop with the authorization policy on
#                           (--insecure: plaintext, no policy, for debugging); --scale (Docker only,
#                           repeatable): run N replicas of a stateless service, e.g. --scale echo=3;
#                           Every service serves Prometheus metrics (/metrics: 9464 in its container;
#                           locally main's port + 3, + 4, + 5); --observability adds a Prometheus
#                           scraping them all (Docker: an image of Debian's package; local: Debian's
#                           prometheus, if installed), its UI and API on the host's loopback;
#                           -f (Docker only, repeatable): a compose file adding services of your own,
#                           after compose.yaml (e.g. examples/greeter/compose.greeter.yaml); later
#                           commands use the files of the last `up`
#   stack.sh down           stop it (workspaces and secrets are kept: compose volumes, or .stack/)
#   stack.sh status         show what runs
#   stack.sh env            print the export lines pointing the grpc-helper CLI at main, with the
#                           operator's credentials (and GRPC_HELPER_PROMETHEUS_URL with --observability)
#   stack.sh env --service NAME [--token] [--options]
#                           print what a local process needs to join the running stack as the
#                           service NAME (see `secrets add`): export lines of the rpc-* items' variables
#                           (main's address, its certificate, the CA, the policy...), or with --options
#                           the same as `-c item=value` options; --token: identified by its token
#                           (NAME.token) rather than its certificate
#   stack.sh secrets add NAME [--service-name GRPC_NAME]...
#                           a service of your own: a certificate from the stack's CA (naming NAME and
#                           each GRPC_NAME) and a token, and an identity NAME in the policy (role service,
#                           granted the GRPC_NAMEs); a running main takes it without a restart
#   stack.sh secrets rotate renew every service certificate, added ones included, and Prometheus' client
#                           certificate (running servers pick them up)
#
# Both modes use the same system/user config folders (deploy/system, deploy/user). Secrets (a private
# CA, a certificate per service, the operator's certificate and token, the policy) are created on first
# use in .stack/secrets (git-ignored, 0700, files 0600).
# END OF USAGE
set -euo pipefail
CALLER=$PWD   # where relative paths given on the command line (-f FILE) start from
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=${GRPC_HELPER_STACK_STATE:-$ROOT/.stack}   # local mode: workspaces, logs, supervisord files
MAIN_PORT=${GRPC_HELPER_MAIN_PORT:-54321}
# Main is asked on IPv4 loopback: the local stack binds it only, and with a Docker-picked port (0) Docker
# 20.10 may publish IPv4 and IPv6 on different ports, so `localhost` (::1 first) could reach another stack
MAIN_HOST=127.0.0.1
SECRETS=${GRPC_HELPER_STACK_SECRETS:-$STATE/secrets}
PROJECT=${COMPOSE_PROJECT_NAME:-grpc-helper}
# The rpc-* items' variables `env --service` sets (environment layer): unset first, and never passed on to the
# stack's own local programs (supervisord hands its environment down)
SERVICE_VARS=(RPC_MAIN_HOST RPC_MAIN_PORT RPC_PROXY_HOST RPC_BIND_ADDRESS RPC_TLS_CERT RPC_TLS_KEY RPC_TLS_CA
              RPC_TLS_CLIENT_AUTH RPC_AUTH_POLICY RPC_AUTH_TOKEN_FILE)
# The Prometheus image of --observability: the grpc-helper image's name with -prometheus (build-prometheus-image.sh)
IMAGE=${GRPC_HELPER_IMAGE:-grpc-helper:latest}
export GRPC_HELPER_PROMETHEUS_IMAGE=${GRPC_HELPER_PROMETHEUS_IMAGE:-${IMAGE%%:*}-prometheus:latest}
# compose.yaml's `prometheus` service has the `observability` profile: known to every compose command here (status
# shows it, down stops it), started by `up` only with --observability (it names the services it starts)
export COMPOSE_PROFILES=observability

compose() {
    # compose.yaml, then the files of the last `up -f` (compose merges them in order; paths in every file are
    # relative to the first one's folder, the repository), after deploy/compose.empty.yaml (see why there).
    # Compose v2 plugin when present, else docker-compose 1.29
    local files=(-f "$ROOT/compose.yaml" -f "$ROOT/deploy/compose.empty.yaml") file
    if [ -f "$STATE/compose-files" ]; then
        while IFS= read -r file; do files+=(-f "$file"); done < "$STATE/compose-files"
    fi
    if docker compose version >/dev/null 2>&1; then
        docker compose -p "$PROJECT" "${files[@]}" "$@"
    else
        docker-compose -p "$PROJECT" "${files[@]}" "$@"
    fi
}

have_docker() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

mode() {
    # Whatever was started last decides what status/down act on
    if [ -f "$STATE/mode" ]; then cat "$STATE/mode"; elif have_docker; then echo docker; else echo local; fi
}

poll_until() {
    # Run the probe "$2..." every second until it succeeds, for up to GRPC_HELPER_STACK_TIMEOUT seconds
    # (180 by default); past that, say "stack: $1 after Ns" and fail
    local what=$1 limit=${GRPC_HELPER_STACK_TIMEOUT:-180}
    shift
    local deadline=$((SECONDS + limit))
    until "$@"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "stack: $what after ${limit}s" >&2
            return 1
        fi
        sleep 1
    done
}

samples_registered() {
    # Main answers, and both samples are registered on it
    .venv/bin/grpc-helper --host "$MAIN_HOST" --port "$MAIN_PORT" --timeout 2 --json info echo notes 2>/dev/null \
        | .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); sys.exit(not all(i.get("proxy_port") for i in d["items"]))' 2>/dev/null
}

wait_ready() {
    # Up when main answers and both samples are registered on it (bounded wait)
    poll_until "not ready" samples_registered || return 1
    .venv/bin/grpc-helper --host "$MAIN_HOST" --port "$MAIN_PORT" info
}

container_secrets() {
    # One folder per service (the samples and every added one: `secrets add`), mounted read-only in its
    # container (compose.yaml, or a file of `up -f`): its certificate and key, the CA and the policy, owned by
    # the containers' user (uid 10001) and readable by it only. Replaced file by file (a rename each), so a
    # running server picks a renewal up (rpc-tls-* files re-read) and main a new policy.
    # Done as root in a throw-away container of the image, whoever runs this script: a user who is not
    # root could neither give the files to uid 10001 nor replace them once given.
    local out="$STATE/container-secrets" services
    mkdir -p "$out"
    services="$(.venv/bin/python scripts/stack_secrets.py list "$SECRETS") prometheus"
    # shellcheck disable=SC2016  # expanded by the container's shell
    # Prometheus (--observability) gets its client certificate the same way, and no policy
    local script='set -eu
src=$1 dst=$2
shift 2
for svc in "$@"; do
    mkdir -p "$dst/$svc"
    chmod 0700 "$dst/$svc"
    policy="policy.json:policy.json"
    [ "$svc" != prometheus ] || policy=""
    for pair in "$svc.crt:cert.pem" "$svc.key:key.pem" "ca.crt:ca.pem" $policy; do
        install -m 0600 -o 10001 -g 10001 "$src/${pair%%:*}" "$dst/$svc/.${pair#*:}.tmp"
        mv -f "$dst/$svc/.${pair#*:}.tmp" "$dst/$svc/${pair#*:}"
    done
    chown 10001:10001 "$dst/$svc"
done'
    # shellcheck disable=SC2086  # one service name a word
    docker run --rm --network none --user 0 --entrypoint sh -v "$SECRETS:/in:ro" -v "$out:/out" \
        "${GRPC_HELPER_IMAGE:-grpc-helper:latest}" -c "$script" sh /in /out $services
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
    # Every service of the compose files (those of `up -f` too); the `observability` profile's only with it
    local profiles=""
    if [ "$OBSERVABILITY" = 1 ]; then
        bash scripts/build-prometheus-image.sh
        profiles=observability
        # Its scrape config: mTLS with its own client certificate, or plain HTTP for a plaintext stack
        export GRPC_HELPER_PROMETHEUS_CONFIG=compose.yml
        [ "$SECURE" = 1 ] || GRPC_HELPER_PROMETHEUS_CONFIG=compose-plaintext.yml
    fi
    if [ "$SECURE" = 1 ]; then
        container_secrets
        secure_compose_env
    fi
    GRPC_HELPER_MAIN_PORT=$MAIN_PORT COMPOSE_PROFILES=$profiles compose up -d --no-build "${SCALE[@]}"
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

prometheus_ready() {
    .venv/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/-/ready", timeout=2)' \
        "$1" 2>/dev/null
}

wait_prometheus() {
    # Up when its API answers (bounded wait)
    poll_until "Prometheus not ready at $1" prometheus_ready "$1"
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

all_healthy() {
    # Every container of "$@" healthy by its HEALTHCHECK (one without a HEALTHCHECK counts as healthy)
    ! docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}healthy{{end}}' "$@" | grep -qv '^healthy$'
}

wait_healthy() {
    # Every container of the stack healthy, by its HEALTHCHECK (those of `up -f` files too): bounded
    local ids
    # shellcheck disable=SC2207  # one container ID a word
    ids=($(compose ps -q))
    poll_until "not every container healthy (stack.sh status)" all_healthy "${ids[@]}"
}

service_env() {
    # What a local process needs to join the running stack as the added service $1, identified by its
    # certificate or (token=1) its token: the rpc-* items, as export lines of their environment variables
    # (after an unset of those a previous call may have set), or (options=1) as -c options
    local name=$1 token=$2 options=$3 items=() gateway item var
    items+=("rpc-main-host=$MAIN_HOST" "rpc-main-port=$(cat "$STATE/port")")
    if [ "$(mode)" = docker ]; then
        # Main runs in a container: it reaches this host at the gateway of the stack's network, the address
        # the process registers (it listens on every interface: its own auto-client calls it on loopback)
        gateway=$(docker network inspect -f '{{range .IPAM.Config}}{{println .Gateway}}{{end}}' "${PROJECT}_default" \
            | grep -m 1 -E '^[0-9]+(\.[0-9]+){3}$') || { echo "stack: no IPv4 gateway on ${PROJECT}_default" >&2; return 1; }
        items+=("rpc-proxy-host=$gateway")
    else
        items+=("rpc-bind-address=127.0.0.1")   # loopback, as the local stack's own programs
    fi
    if [ -f "$STATE/secure" ]; then
        [ -f "$SECRETS/$name.crt" ] || { echo "stack: no certificate for $name: stack.sh secrets add $name --service-name ..." >&2; return 1; }
        items+=("rpc-tls-cert=$SECRETS/$name.crt" "rpc-tls-key=$SECRETS/$name.key" "rpc-tls-ca=$SECRETS/ca.crt"
                "rpc-tls-client-auth=required" "rpc-auth-policy=$SECRETS/policy.json")
        if [ "$token" = 1 ]; then items+=("rpc-auth-token-file=$SECRETS/$name.token"); fi
    fi
    if [ "$options" = 1 ]; then
        local words=()
        for item in "${items[@]}"; do words+=(-c "$(printf '%q' "$item")"); done
        echo "${words[*]}"
    else
        echo "unset ${SERVICE_VARS[*]}"
        local line=export
        for item in "${items[@]}"; do
            var=${item%%=*}
            var=${var^^}
            line="$line ${var//-/_}=$(printf '%q' "${item#*=}")"
        done
        echo "$line"
    fi
}

wait_accepted() {
    # Until main takes the identity $1 by its certificate (main reloads a changed policy within seconds;
    # bounded). Without the operator's token a shell may hold: it would be taken instead
    local name=$1 deadline=$((SECONDS + 60))
    until env -u GRPC_HELPER_TOKEN_FILE -u GRPC_HELPER_TLS_SERVER_NAME .venv/bin/grpc-helper --host "$MAIN_HOST" \
        --port "$(cat "$STATE/port")" --timeout 2 --tls-ca "$SECRETS/ca.crt" --tls-cert "$SECRETS/$name.crt" \
        --tls-key "$SECRETS/$name.key" info srv >/dev/null 2>&1
    do
        if [ $SECONDS -ge $deadline ]; then
            echo "stack: main did not take $name's certificate within 60 s (main's log says why)" >&2
            return 1
        fi
        sleep 1
    done
    echo "secrets: main takes $name's certificate (policy reloaded, no restart)"
}

usage() {
    sed -n '2,/^# END OF USAGE/p' "$0" | sed '$d'   # the usage above, not the script
    exit 2
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
        LOCAL=0 SECURE=1 OBSERVABILITY=0 SCALE=() FILES=()
        set -- "${@:2}"
        while [ $# -gt 0 ]; do
            case "$1" in
                --local) LOCAL=1 ;;
                --insecure) SECURE=0 ;;
                --observability) OBSERVABILITY=1 ;;
                --scale)
                    [[ "${2:-}" =~ ^(echo)=[1-9][0-9]?$ ]] || { echo "stack: --scale echo=N (1-99): only echo is stateless" >&2; exit 2; }
                    SCALE+=(--scale "$2"); shift ;;
                -f|--file)
                    file=$(cd "$CALLER" && realpath -e -- "${2:-}" 2>/dev/null) \
                        || { echo "stack: -f needs a compose file (${2:-none given}: not found)" >&2; exit 2; }
                    FILES+=("$file"); shift ;;
                *) echo "stack: unknown option $1" >&2; exit 2 ;;
            esac
            shift
        done
        if [ ${#FILES[@]} -gt 0 ] && { [ "$LOCAL" = 1 ] || ! have_docker; }; then
            echo "stack: -f adds services to the compose stack: it needs Docker" >&2
            exit 2
        fi
        unset "${SERVICE_VARS[@]}"   # an `env --service` of this shell is not the stack's programs' environment
        bash scripts/dev-setup.sh   # the CLI and supervisord used below live in .venv
        mkdir -p "$STATE"
        rm -f "$STATE/compose-files"
        if [ ${#FILES[@]} -gt 0 ]; then printf '%s\n' "${FILES[@]}" > "$STATE/compose-files"; fi
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
        if [ ${#FILES[@]} -gt 0 ]; then wait_healthy; fi   # the services of the files too
        observed=""
        if [ -f "$STATE/prometheus-url" ]; then
            wait_prometheus "$(cat "$STATE/prometheus-url")"
            observed="; Prometheus on $(cat "$STATE/prometheus-url")"
        fi
        hint="eval \"\$(./scripts/stack.sh env)\"; .venv/bin/grpc-helper info"
        echo "stack: up ($(mode)$([ "$SECURE" = 1 ] && echo ', mTLS + policy' || echo ', plaintext')); main on $MAIN_HOST:$MAIN_PORT$observed — try: $hint"
        ;;
    env)
        SERVICE="" TOKEN=0 OPTIONS=0
        set -- "${@:2}"
        while [ $# -gt 0 ]; do
            case "$1" in
                --service) [ -n "${2:-}" ] || usage; SERVICE=$2; shift ;;
                --token) TOKEN=1 ;;
                --options) OPTIONS=1 ;;
                *) usage ;;
            esac
            shift
        done
        if [ -z "$SERVICE" ] && [ "$TOKEN$OPTIONS" != 00 ]; then usage; fi
        [ -f "$STATE/port" ] || { echo "stack: not started (stack.sh up)" >&2; exit 1; }
        if [ -n "$SERVICE" ]; then service_env "$SERVICE" "$TOKEN" "$OPTIONS"; else cli_env; fi
        ;;
    secrets)
        # The copies handed to the containers are made again when the compose stack runs secure (else at `up`)
        RUNNING=$([ -f "$STATE/port" ] && [ -f "$STATE/secure" ] && echo 1 || echo 0)
        case "${2:-}" in
            rotate)
                .venv/bin/python scripts/stack_secrets.py rotate "$SECRETS"
                if [ "$RUNNING" = 1 ] && [ "$(mode)" = docker ]; then container_secrets; fi
                ;;
            add)
                [[ "${3:-}" =~ ^[^-] ]] || usage   # the name first
                .venv/bin/python scripts/stack_secrets.py create "$SECRETS"   # before the first `up` too
                .venv/bin/python scripts/stack_secrets.py add "$SECRETS" "${@:3}"
                if [ "$RUNNING" = 1 ]; then
                    if [ "$(mode)" = docker ]; then container_secrets; fi
                    wait_accepted "$3"
                fi
                ;;
            *) usage ;;
        esac
        ;;
    down)
        if [ "$(mode)" = docker ]; then
            # Quiet when nothing runs (compose would say its network is not found)
            if [ -n "$(compose ps -q 2>/dev/null)" ] || docker network inspect "${PROJECT}_default" >/dev/null 2>&1; then
                # echo's replicas keep their workspaces in anonymous volumes: removed with them (a down/up
                # cycle must not leave volumes behind); main's and notes' named volumes are kept
                compose rm --stop --force -v echo >/dev/null
                # --remove-orphans: a service of an earlier `up -f` file, if this one had none
                compose down --remove-orphans
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
        rm -f "$STATE/mode" "$STATE/port" "$STATE/compose-files" "$STATE/prometheus-url"
        ;;
    status)
        if [ "$(mode)" = docker ]; then compose ps; else .venv/bin/supervisorctl -c "$STATE/supervisord.conf" status; fi
        ;;
    *) usage ;;
esac
