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
# The node has a TUN when it can (root, /dev/net/tun, CAP_NET_ADMIN), else it runs
# `up --userspace`; PILOTIF_USERSPACE=1 or 0 decides instead. A userspace node:
# PILOTIF_SOCKS5 (HOST:PORT, default 127.0.0.1:1080), PILOTIF_HTTP_PROXY (HOST:PORT, default
# 127.0.0.1:3128; "off" for none), PILOTIF_FORWARD and PILOTIF_EXPOSE (comma-separated
# --forward and --expose values), PILOTIF_PROXY_CREDENTIALS (USER:PASSWORD, read by pilotif).
# Registry: PILOTIF_LISTEN (HOST:PORT, default 0.0.0.0:7946), PILOTIF_EXTRA_ARGS.
# State (key, pins; the registry's database) lives in PILOTIF_STATE_DIR, by default root's
# /var/lib/pilotif (the image's volume), another user's ${XDG_STATE_HOME:-~/.local/state}/pilotif.
set -eu
set -f # the lists in PILOTIF_* are split on spaces and commas, never globbed

if [ -n "${PILOTIF_STATE_DIR:-}" ]; then
    STATE_DIR="$PILOTIF_STATE_DIR"
elif [ "$(id -u)" -eq 0 ]; then
    STATE_DIR=/var/lib/pilotif
else
    STATE_DIR="${XDG_STATE_HOME:-$HOME/.local/state}/pilotif"
fi
ROLE_FILE="$STATE_DIR/container-role"
DEFAULT_LISTEN="0.0.0.0:7946"
DEFAULT_SOCKS5="127.0.0.1:1080"
DEFAULT_HTTP_PROXY="127.0.0.1:3128"
CAP_NET_ADMIN_BIT=12
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

# Whether this container can run a TUN node: root, /dev/net/tun and CAP_NET_ADMIN in effect;
# if not, `why` says what is missing.
can_tun() {
    why=""
    [ "$(id -u)" -eq 0 ] || why="not root (uid $(id -u))"
    [ -c /dev/net/tun ] || why="${why:+$why, }no /dev/net/tun"
    capabilities=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)
    [ $((0x$capabilities >> CAP_NET_ADMIN_BIT & 1)) -eq 1 ] || why="${why:+$why, }no CAP_NET_ADMIN"
    [ -z "$why" ]
}

# Whether the node runs `up --userspace`: PILOTIF_USERSPACE=1 or 0, else when it has no TUN.
use_userspace() {
    case "${PILOTIF_USERSPACE:-}" in
    1) return 0 ;;
    0)
        can_tun || fail "PILOTIF_USERSPACE=0 needs a TUN, but $why: run as root with" \
            "--device /dev/net/tun --cap-add NET_ADMIN, or set PILOTIF_USERSPACE=1"
        return 1
        ;;
    "")
        can_tun && return 1
        log "$why: a userspace node (\`up --userspace\`): programs reach peers through" \
            "SOCKS5 ${PILOTIF_SOCKS5:-$DEFAULT_SOCKS5} and the HTTP proxy" \
            "${PILOTIF_HTTP_PROXY:-$DEFAULT_HTTP_PROXY}"
        return 0
        ;;
    *) fail "PILOTIF_USERSPACE must be 1, 0 or unset, not '$PILOTIF_USERSPACE'" ;;
    esac
}

run_node() {
    [ -n "${PILOTIF_REGISTRY:-}" ] || fail "set PILOTIF_REGISTRY=HOST:PORT (the registry)"
    [ -n "${PILOTIF_HOSTNAME:-}" ] || fail "set PILOTIF_HOSTNAME=NAME (this node's name)"
    set -- up --foreground --registry "$PILOTIF_REGISTRY" --hostname "$PILOTIF_HOSTNAME"
    if use_userspace; then
        set -- "$@" --userspace --socks5 "${PILOTIF_SOCKS5:-$DEFAULT_SOCKS5}"
        http_proxy="${PILOTIF_HTTP_PROXY:-$DEFAULT_HTTP_PROXY}"
        [ "$http_proxy" = off ] || set -- "$@" --http-proxy "$http_proxy"
        for forward in $(echo "${PILOTIF_FORWARD:-}" | tr ',' ' '); do
            set -- "$@" --forward "$forward"
        done
        for expose in $(echo "${PILOTIF_EXPOSE:-}" | tr ',' ' '); do
            set -- "$@" --expose "$expose"
        done
    fi
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
