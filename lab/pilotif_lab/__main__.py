"""`python3 -m pilotif_lab [--static]`: the demo (`scripts/demo.sh` runs it): a registry
and two agents behind NATs that trust each other and talk by name, or with --static the
static-key data plane; everything is removed afterwards."""

import argparse
import sys

from pilotif_lab.demo import run_demo
from pilotif_lab.nat_demo import run_nat_demo


def main() -> int:
    """Run the demo the arguments name; its exit code."""
    parser = argparse.ArgumentParser(prog="python3 -m pilotif_lab", description=__doc__)
    parser.add_argument(
        "--static",
        action="store_true",
        help="show the static-key data plane (two hosts, wg-quick files) instead",
    )
    arguments = parser.parse_args()
    return run_demo() if arguments.static else run_nat_demo()


if __name__ == "__main__":
    sys.exit(main())
