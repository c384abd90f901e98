"""`python -m knightctl`: the same CLI as the `knightctl` command."""

from knightctl.cli.commands import main

if __name__ == "__main__":  # a spawned process imports this module as __mp_main__
    main()
