#!/usr/bin/env bash
# The test command: install, lint, type-check, then unit and integration tests.
# Integration tests build network namespaces and need root (`sudo` where you are not root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh test
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy --strict pilotif
python3 -m pytest -q -rs tests "$@"
