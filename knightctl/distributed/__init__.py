"""Several processes: a rank's process group, shard and collectives (`ranks`), `--nproc-per-node`
(`launch`) and a restarted job's record (`jobs`). The MLflow side of a failed job is
`knightctl.tracking.failures`.
"""

from knightctl._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "JobRecord": "jobs",
        "LAUNCHED_ENV": "jobs",
        "RankFailure": "launch",
        "Ranks": "ranks",
        "SINGLE": "ranks",
        "Single": "ranks",
        "agreed_resume": "jobs",
        "cause": "launch",
        "is_peer_lost": "ranks",
        "job_file": "jobs",
        "joined": "ranks",
        "write_job": "jobs",
    },
)
