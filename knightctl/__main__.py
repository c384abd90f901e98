"""`python -m knightctl`: the same CLI as the `knightctl` command."""

from knightctl.cli import main

main()
