"""`python -m pilotif` runs the CLI."""

from pilotif.cli import main

main()
