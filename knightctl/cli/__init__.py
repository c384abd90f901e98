"""The `knightctl` command line: each command parses its options, calls one library function and
renders the result with `knightctl.console`, mapping errors to exit codes. Nothing below imports
this package.
"""

from knightctl._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "main": "commands",
    },
)
