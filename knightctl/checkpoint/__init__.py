"""Stopping and going on: checkpoint files (atomic, checksummed, weights-only), what they hold,
finding the one `--resume` names and settling the spec, and `--verify-resume`.
"""

from knightctl._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "CHECKPOINT_DIR_TAG": "resume",
        "CheckpointFolder": "files",
        "ResumePoint": "state",
        "ResumeVerdict": "verify",
        "Resumption": "resume",
        "find_checkpoint": "resume",
        "load_checkpoint": "files",
        "prepare_resume": "resume",
        "restore": "state",
        "rng_states": "state",
        "save_checkpoint": "files",
        "set_rng_states": "state",
        "training_state": "state",
        "verify_resume": "verify",
    },
)
