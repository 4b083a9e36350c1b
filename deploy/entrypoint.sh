#!/bin/sh
# Entrypoint of the pilotif image (deploy/Dockerfile), configured by environment variables.
#
#   (no arguments)        the node, `pilotif up --foreground`, or the registry when
#                         PILOTIF_ROLE=registry
#   registry [ARGS...]    the registry: `pilotif registry ARGS...`
#   join-key FILE [ARGS]  once: a join key from the registry in this container's state dir
#                         (`pilotif registry admin key create ARGS`), written to FILE
#   health                the HEALTHCHECK: `pilotif status` (node), the UDP port bound (registry)
#   anything else         run as given (`pilotif status`, `sh`, ...)
#
# Node: PILOTIF_REGISTRY (HOST:PORT), PILOTIF_HOSTNAME, PILOTIF_TAGS (a,b), PILOTIF_REGISTRY_KEY,
# PILOTIF_AUTO_APPROVE ("" off, "all", "network", "tag:NAME"), PILOTIF_JOIN_KEY (or
# PILOTIF_JOIN_KEY_FILE, a file holding it), PILOTIF_HANDSHAKE (peers to ask for trust once
# the node is up, comma-separated), PILOTIF_EXTRA_ARGS (more `pilotif up` options).
# Registry: PILOTIF_LISTEN (HOST:PORT, default 0.0.0.0:7946), PILOTIF_EXTRA_ARGS.
# State (key, pins; the registry's database) lives in PILOTIF_STATE_DIR, the image's volume.
set -eu
set -f # PILOTIF_EXTRA_ARGS and PILOTIF_HANDSHAKE are split on spaces and commas, never globbed

STATE_DIR="${PILOTIF_STATE_DIR:-/var/lib/pilotif}"
ROLE_FILE="$STATE_DIR/container-role"
DEFAULT_LISTEN="0.0.0.0:7946"
HANDSHAKE_RETRY_S=2
HANDSHAKE_TRIES=150
export PILOTIF_STATE_DIR="$STATE_DIR"

fail() {
    echo "pilotif-entrypoint: $*" >&2
    exit 2
}

log() {
    echo "pilotif-entrypoint: $*" >&2
}

# The UDP port of a HOST:PORT ([v6]:PORT too).
port_of() {
    echo "${1##*:}"
}

run_registry() {
    listen="${PILOTIF_LISTEN:-$DEFAULT_LISTEN}"
    previous=""
    for argument in "$@"; do
        case "$previous" in --listen) listen="$argument" ;; esac
        case "$argument" in --listen=*) listen="${argument#--listen=}" ;; esac
        previous="$argument"
    done
    mkdir -p "$STATE_DIR"
    echo "registry $(port_of "$listen")" >"$ROLE_FILE"
    # shellcheck disable=SC2086 # PILOTIF_EXTRA_ARGS is a list of options
    exec pilotif registry --listen "$listen" "$@" ${PILOTIF_EXTRA_ARGS:-}
}

# Ask each peer in PILOTIF_HANDSHAKE for trust once the daemon answers; runs in the background.
handshake_when_up() {
    tries=0
    until pilotif status >/dev/null 2>&1; do
        tries=$((tries + 1))
        [ "$tries" -lt "$HANDSHAKE_TRIES" ] || { log "node not up, no handshake sent"; return; }
        sleep "$HANDSHAKE_RETRY_S"
    done
    for peer in $(echo "$PILOTIF_HANDSHAKE" | tr ',' ' '); do
        tries=0
        until reply=$(pilotif handshake "$peer" 2>&1); do
            tries=$((tries + 1))
            [ "$tries" -lt "$HANDSHAKE_TRIES" ] || { log "handshake $peer: $reply"; break; }
            sleep "$HANDSHAKE_RETRY_S"
        done
        log "handshake $peer: $reply"
    done
}

run_node() {
    [ -n "${PILOTIF_REGISTRY:-}" ] || fail "set PILOTIF_REGISTRY=HOST:PORT (the registry)"
    [ -n "${PILOTIF_HOSTNAME:-}" ] || fail "set PILOTIF_HOSTNAME=NAME (this node's name)"
    [ -c /dev/net/tun ] || fail "no /dev/net/tun: run with --device /dev/net/tun --cap-add NET_ADMIN"
    set -- up --foreground --registry "$PILOTIF_REGISTRY" --hostname "$PILOTIF_HOSTNAME"
    [ -z "${PILOTIF_TAGS:-}" ] || set -- "$@" --tags "$PILOTIF_TAGS"
    [ -z "${PILOTIF_REGISTRY_KEY:-}" ] || set -- "$@" --registry-key "$PILOTIF_REGISTRY_KEY"
    [ -z "${PILOTIF_AUTO_APPROVE:-}" ] || set -- "$@" "--auto-approve=$PILOTIF_AUTO_APPROVE"
    if [ -n "${PILOTIF_JOIN_KEY_FILE:-}" ]; then
        [ -r "$PILOTIF_JOIN_KEY_FILE" ] || fail "PILOTIF_JOIN_KEY_FILE: cannot read $PILOTIF_JOIN_KEY_FILE"
        PILOTIF_JOIN_KEY=$(cat "$PILOTIF_JOIN_KEY_FILE")
        export PILOTIF_JOIN_KEY # `pilotif up` reads it (never on its command line)
    fi
    mkdir -p "$STATE_DIR"
    echo "node" >"$ROLE_FILE"
    [ -z "${PILOTIF_HANDSHAKE:-}" ] || handshake_when_up &
    # shellcheck disable=SC2086 # PILOTIF_EXTRA_ARGS is a list of options
    exec pilotif "$@" ${PILOTIF_EXTRA_ARGS:-}
}

# A join key for the nodes of a compose file, made once: FILE is left alone if it exists.
make_join_key() {
    [ "$#" -ge 1 ] || fail "join-key FILE [pilotif registry admin key create options]"
    file="$1"
    shift
    [ ! -s "$file" ] || exit 0
    pilotif registry admin --state-dir "$STATE_DIR" key create "$@" >"$file.new"
    mv "$file.new" "$file"
    log "join key written to $file"
}

# Healthy: the node's daemon answers `pilotif status`; the registry's UDP port is bound.
health() {
    role=$(cat "$ROLE_FILE" 2>/dev/null || echo node)
    case "$role" in
    registry\ *)
        port=$(printf '%04X' "${role#registry }")
        grep -q "^ *[0-9]*: [0-9A-F]*:$port " /proc/net/udp /proc/net/udp6
        ;;
    *) pilotif status >/dev/null ;;
    esac
}

if [ "$#" -eq 0 ]; then
    case "${PILOTIF_ROLE:-node}" in
    node) run_node ;;
    registry) run_registry ;;
    *) fail "PILOTIF_ROLE must be node or registry, not '$PILOTIF_ROLE'" ;;
    esac
fi
case "$1" in
registry)
    shift
    run_registry "$@"
    ;;
join-key)
    shift
    make_join_key "$@"
    ;;
health) health ;;
*) exec "$@" ;;
esac
