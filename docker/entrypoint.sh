#!/bin/sh
# Entrypoint of the sfu image.
#
# Fills the announced (1:1 NAT) address before starting sfu, unless SFU_ANNOUNCE is already set:
#   SFU_PUBLIC_IP=203.0.113.5     advertise the host's public address instead of the container's
#   SFU_PUBLIC_IP=auto            learn it from STUN at start-up (needs SFU_ICE_STUN_SERVERS)
#   SFU_PUBLIC_PORT=50000         the published host port, when it differs from the media port
#   SFU_ANNOUNCE_MODE=append      keep the container's own candidate too (default: replace)
# Arguments: an sfu command (serve, config, doctor, version, ...) or options for `sfu serve`;
# anything else is executed as is (e.g. `sh`).
set -eu

if [ -z "${SFU_ANNOUNCE:-}" ] && [ -n "${SFU_PUBLIC_IP:-}" ]; then
    public="$SFU_PUBLIC_IP"
    port="${SFU_PUBLIC_PORT:-}"
    rule="*=$public"
    if [ -n "$port" ]; then
        case "$public" in
            *:*) rule="*=[$public]" ;;  # IPv6: brackets before a port
        esac
        rule="$rule:$port"
    fi
    if [ -n "${SFU_ANNOUNCE_MODE:-}" ]; then
        rule="$rule/$SFU_ANNOUNCE_MODE"
    fi
    SFU_ANNOUNCE="$rule"
    export SFU_ANNOUNCE
    echo "sfu-entrypoint: SFU_ANNOUNCE=$SFU_ANNOUNCE" >&2
fi

if [ "$#" -eq 0 ]; then
    set -- serve
fi
case "$1" in
    -*) exec sfu serve "$@" ;;
    serve|config|doctor|natlab|bench|token|version) exec sfu "$@" ;;
    *) exec "$@" ;;
esac
