#!/usr/bin/env bash
# Install what pilotif, its demo and its tests need: Debian packages (as root) and the
# Python package itself with its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
SYSTEM_PACKAGES=(
    iproute2 iputils-ping nftables wireguard-go wireguard-tools iperf3 tcpdump ethtool conntrack
    docker.io docker-compose debootstrap systemd
)
if [ "$(id -u)" -eq 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${SYSTEM_PACKAGES[@]}"
else
    echo "install.sh: not root, skipping apt-get install of ${SYSTEM_PACKAGES[*]}" >&2
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
