#!/usr/bin/env bash
# The demo: two agents in two network namespaces talking over pilotif (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh >/dev/null
exec pilotif demo "$@"
