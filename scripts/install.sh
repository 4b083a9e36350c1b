#!/usr/bin/env bash
# Install what pilotif needs, as root: Debian packages, then the Python package.
#
#   ./scripts/install.sh demo    what the demo needs: the namespace lab's tools, and pilotif
#                                (gcc, libssl-dev, python3-dev build its native batch loop)
#   ./scripts/install.sh test    (the default) all the tests need too: wireguard-go, iperf3,
#                                docker, debootstrap, systemd, postgresql, ... and the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${1:-test}"
DEMO_PACKAGES=(iproute2 iputils-ping nftables gcc libssl-dev python3-dev)
TEST_PACKAGES=(
    "${DEMO_PACKAGES[@]}" wireguard-go wireguard-tools iperf3 tcpdump ethtool conntrack
    docker.io docker-compose debootstrap systemd postgresql tinyproxy squid
    miniupnpd-nftables miniupnpd curl util-linux
)
case "$PROFILE" in
demo)
    SYSTEM_PACKAGES=("${DEMO_PACKAGES[@]}")
    PYTHON_PACKAGE=.
    ;;
test)
    SYSTEM_PACKAGES=("${TEST_PACKAGES[@]}")
    PYTHON_PACKAGE='.[test]'
    ;;
*)
    echo "install.sh: the profile is demo or test, not '$PROFILE'" >&2
    exit 2
    ;;
esac
if [ "$(id -u)" -eq 0 ]; then
    missing=()
    for package in "${SYSTEM_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
else
    echo "install.sh: not root, skipping apt-get install of ${SYSTEM_PACKAGES[*]}" >&2
fi
python3 -m pip install -q --disable-pip-version-check -e "$PYTHON_PACKAGE" -e ./lab
