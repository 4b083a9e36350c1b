"""`python -m pilotif` runs the CLI."""

from pilotif.cli.main import main

main()
