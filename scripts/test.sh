#!/usr/bin/env bash
# The test command: install, lint, type-check, then unit and integration tests.
# Integration tests build network namespaces and need root (`sudo` where you are not root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh test
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy --strict pilotif
python3 -m pytest -q -rs -n 2 tests/unit "$@"
# Each lab has namespaces of its own, so three integration tests run at once (the tests of
# one file on one worker: the docker tests share a compose project): they mostly wait on
# their labs' timers, not the CPU (all 112 pass three at a time on one core). Tests that
# assert a latency (marked `alone`) run afterwards with nothing beside them.
python3 -m pytest -q -rs -n 3 --dist loadfile -m "not alone" tests/integration "$@"
python3 -m pytest -q -rs -m alone tests/integration "$@"
# The data plane's unit tests again with the plain Python path instead of the native one
# (where pilotif is installed without a compiler): its own code runs only there (the
# Python seal and open loops, the device cutting every super-packet, every packet written
# to the TUN as it is).
PILOTIF_PURE_PYTHON=1 python3 -m pytest -q -rs tests/unit/test_batch_loops.py \
    tests/unit/test_device.py tests/unit/test_device_batch.py tests/unit/test_device_segments.py \
    tests/unit/test_datapath.py
