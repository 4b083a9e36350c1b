#!/usr/bin/env bash
# The demo: two agents in two network namespaces talking over pilotif. Run it as root
# (`sudo ./scripts/demo.sh` where you are not); it installs only what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh demo >/dev/null
exec python3 -m pilotif_lab "$@"
