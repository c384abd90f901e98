"""When the tracking server goes away: the on-disk journal, telling a lost server from a refusal
(`fallback`), the metric writer's route through the journal (`outbox`), and `knightctl sync`.
"""

from knightctl._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "FAIL_FAST_ENV": "fallback",
        "Journal": "journal",
        "Outbox": "outbox",
        "StoreFallback": "fallback",
        "SyncReport": "sync",
        "describe_pending": "sync",
        "journal_root": "journal",
    },
)
