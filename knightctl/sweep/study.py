"""A sweep's Optuna study: the trials that many `knightctl sweep` processes, on one machine or many, share.

The study lives in a relational storage (default `sqlite:///optuna.db` in the working folder, beside
`mlflow.db`; a team gives a `postgresql://` URL). Its user attributes record what the sweep is (its
space, sampler, metric, goal and base spec) and its one MLflow parent run. A process claims one
trial at a time with `claim`:
- a WAITING trial first (one re-queued after it failed, was interrupted or went stale);
- else, for a grid, the first point in the grid's order that no trial holds yet, enqueued with its
  values and popped at once (Optuna's `GridSampler` is the study's sampler, but it picks among the
  open points at random and may hand one point to two processes that ask together, so knightctl
  picks the point itself); for random or TPE draws, a new trial while the study holds fewer than
  `--trials`, drawn by a sampler seeded with the sweep's seed and the trial's number, so two
  processes never draw the same values and one process draws the same ones on every rerun.
On one machine the claim runs under a file lock, so it is exact; processes on several machines
share no lock, so a claim checks afterwards that no lower-numbered trial holds the same point (or
the last of the budget) and, if one does, ends its own at once as void, before anything runs.

A trial that failed, was stopped by Ctrl-C, or whose process stopped beating (killed, machine
lost: Optuna's heartbeat) is re-queued with the same values by the next claim round, once.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from knightctl.errors import SweepError
from knightctl.sweep.space import Axis, Trial
from knightctl.tracking.sweeps import hide_password

DEFAULT_STORAGE = "sqlite:///optuna.db"
HEARTBEAT_S = 5  # seconds between a running trial's heartbeats
GRACE_S = 60  # seconds without one after which a RUNNING trial is stale (its process is gone)
_SQLITE_WAIT_S = 60  # how long a sqlite connection waits for another process's write lock
_RETRY_OF = "knightctl.retry_of"  # a re-queued trial: the number of the one it runs again
_VOID = "knightctl.void"  # a trial ended before it ran: why (another process had claimed its point)
_FINAL = "knightctl.final"  # a failed trial that is not to be run again: why
RUN_ID_ATTR = "knightctl.run_id"  # the trial's MLflow run
PARENT_ATTR = "knightctl.parent_run_id"  # the study's MLflow parent run
_IDENTITY = ("sampler", "space", "metric", "goal", "base_digest")  # what a study is made for


def absolute_storage(url: str) -> str:
    """A sqlite URL with its file made absolute (a relative one means the working folder now, not
    wherever a worker process or a later `chdir` is); any other URL as given."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(Path(url[len(prefix) :]).resolve())
    return url


def distribution(axis: Axis) -> BaseDistribution:
    """The Optuna distribution of a swept path: a grid's or a choice's values as written (the spec
    types them as it types --set), or a float or integer range."""
    if axis.distribution in (None, "choice"):
        return CategoricalDistribution(list(axis.values))
    low, high = axis.bounds
    if axis.distribution == "int":
        return IntDistribution(int(low), int(high))
    return FloatDistribution(float(low), float(high), log=axis.distribution == "loguniform")


def trial_of(params: Mapping[str, Any], axes: Sequence[Axis]) -> Trial:
    """The trial's --sets, in the axes' order: `optimizer.lr=0.0123` (a float in full, by repr)."""
    return Trial(tuple(f"{axis.path}={_text(params[axis.path])}" for axis in axes))


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


@dataclass
class Claim:
    """A trial this process claimed: its Optuna trial, its number in the study, and its --sets."""

    optuna_trial: optuna.Trial
    number: int
    trial: Trial
    retry_of: int | None = None


@dataclass
class SweepStudy:
    """One sweep's study, opened by this process, and how it makes and claims trials."""

    study: optuna.Study
    storage: optuna.storages.RDBStorage
    url: str
    name: str
    axes: Sequence[Axis]
    sampler: str  # grid, random or tpe
    seed: int
    budget: int  # the grid's size, or --trials
    grid: Sequence[Trial] = ()
    created: bool = False  # this process made the study (and so makes its parent run)
    _lock: FileLock | None = None
    _running: dict[int, int] = field(default_factory=dict)  # trial number -> trial id, for heartbeats
    _beating: threading.Event = field(default_factory=threading.Event)

    @property
    def parent_run_id(self) -> str | None:
        return self.study.user_attrs.get(PARENT_ATTR)

    def set_parent_run_id(self, run_id: str) -> None:
        self.study.set_user_attr(PARENT_ATTR, run_id)

    def wait_for_parent(self, timeout_s: float = 30.0) -> str | None:
        """The parent run the process that made the study records; None if none appears in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if run_id := optuna.load_study(study_name=self.name, storage=self.storage).user_attrs.get(PARENT_ATTR):
                return run_id
            time.sleep(0.25)
        return None

    def requeue_unfinished(self) -> list[int]:
        """Stale trials failed (Optuna's heartbeat), then every failed trial not yet re-queued, nor
        void, nor final, enqueued again with its values; the numbers re-queued."""
        with self._claiming():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            retried = {t.user_attrs[_RETRY_OF] for t in trials if _RETRY_OF in t.user_attrs}
            again = []
            for t in trials:
                if (
                    t.state == TrialState.FAIL
                    and t.number not in retried
                    and not (_VOID in t.user_attrs or _FINAL in t.user_attrs)
                ):
                    self.study.enqueue_trial(dict(t.params), user_attrs={_RETRY_OF: t.number})
                    again.append(t.number)
            return again

    def claim(self) -> Claim | None:
        """The next trial for this process to run, or None when the study needs no more."""
        distributions = {axis.path: distribution(axis) for axis in self.axes}
        while True:
            with self._claiming():
                trials = self.study.get_trials(deepcopy=False)
                counted = [t for t in trials if _counts(t, trials)]
                waiting = any(t.state == TrialState.WAITING for t in trials)
                if not waiting:
                    if self.sampler == "grid":
                        held = {trial_of(t.params, self.axes).key for t in counted if t.params}
                        point = next((p for p in self.grid if p.key not in held), None)
                        if point is None:
                            return None
                        self.study.enqueue_trial(point.values)
                    elif len(counted) >= self.budget:
                        return None
                    else:
                        self.study.sampler = _sampler(self.sampler, self.seed, len(trials))
                with warnings.catch_warnings():  # the heartbeat is ours (`_beat`), not optimize()'s
                    warnings.filterwarnings("ignore", "Heartbeat of storage")
                    asked = self.study.ask(distributions)
            claim = Claim(asked, asked.number, trial_of(asked.params, self.axes), asked.user_attrs.get(_RETRY_OF))
            if why := self._taken_elsewhere(claim):
                asked.set_user_attr(_VOID, why)
                self.study.tell(asked, state=TrialState.FAIL)
                continue
            self._running[claim.number] = self.storage.get_trial_id_from_study_id_trial_number(
                self.storage.get_study_id_from_name(self.name), claim.number
            )
            self._start_heartbeat()
            return claim

    def finish(self, claim: Claim, state: str, value: float | None = None, final: str | None = None) -> None:
        """Tell the study how `claim` ended: complete with its value, pruned, or failed (`final`: why it
        is not to run again; otherwise the next claim round re-queues it)."""
        self._running.pop(claim.number, None)
        if final:
            claim.optuna_trial.set_user_attr(_FINAL, final)
        if state == "complete" and value is not None:
            self.study.tell(claim.optuna_trial, value)
        else:
            self.study.tell(claim.optuna_trial, state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL)

    def requeue(self, claim: Claim) -> None:
        """`claim` failed (Ctrl-C) and is enqueued again at once, for this study's next claim anywhere."""
        self.finish(claim, "failed")
        with self._claiming():
            self.study.enqueue_trial(dict(claim.optuna_trial.params), user_attrs={_RETRY_OF: claim.number})

    def others_running(self) -> bool:
        """Whether a trial of another process is still running (then the parent run stays RUNNING)."""
        return any(
            t.state == TrialState.RUNNING and t.number not in self._running
            for t in self.study.get_trials(deepcopy=False)
        )

    def close(self) -> None:
        self._beating.set()

    def _taken_elsewhere(self, claim: Claim) -> str | None:
        """Why `claim` must not run: a lower-numbered trial (another machine's, asked at the same
        moment) holds its point, or the budget was spent before it; None when it is this process's."""
        trials = [t for t in self.study.get_trials(deepcopy=False) if t.number < claim.number]
        counted = [t for t in trials if _counts(t, trials)]
        if self.sampler == "grid":
            for t in counted:
                if t.params and trial_of(t.params, self.axes).key == claim.trial.key and t.number != claim.retry_of:
                    return f"trial {t.number} holds the same point"
        elif claim.retry_of is None and len(counted) >= self.budget:
            return f"the study already held its {self.budget} trials"
        return None

    def _claiming(self) -> FileLock:
        """The lock that makes a claim exact among this machine's processes."""
        if self._lock is None:
            digest = hashlib.sha256(f"{self.url}\n{self.name}".encode()).hexdigest()[:16]
            self._lock = FileLock(str(Path(tempfile.gettempdir()) / f"knightctl-study-{digest}.lock"))
        return self._lock

    def _start_heartbeat(self) -> None:
        if getattr(self, "_heart", None) is None:
            self._heart = threading.Thread(target=self._beat, name="knightctl-heartbeat", daemon=True)
            self._heart.start()

    def _beat(self) -> None:
        while not self._beating.is_set():
            for trial_id in list(self._running.values()):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # a storage hiccup: the next beat tries again; stale only after GRACE_S
                    pass
            self._beating.wait(HEARTBEAT_S)


def open_study(
    url: str,
    name: str,
    *,
    axes: Sequence[Axis],
    sampler: str,
    seed: int,
    budget: int,
    grid: Sequence[Trial],
    identity: Mapping[str, str],
    goal: str,
    pruner: str = "none",
) -> SweepStudy:
    """The study `name` in `url`, made now (with `identity` as its user attributes) or opened, in which
    case it must have been made for the same sweep (a SweepError names what differs)."""
    url = absolute_storage(url)
    # Optuna makes its tables when a storage first opens and the study when it is created: two
    # processes started together on a new sqlite file raced there (one failed on a table the other
    # had just made), so on one machine they take turns, under a lock named after the URL.
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    with FileLock(str(Path(tempfile.gettempdir()) / f"knightctl-optuna-{digest}.lock")):
        return _open_study(url, name, axes, sampler, seed, budget, grid, identity, goal, pruner)


def _open_study(
    url: str,
    name: str,
    axes: Sequence[Axis],
    sampler: str,
    seed: int,
    budget: int,
    grid: Sequence[Trial],
    identity: Mapping[str, str],
    goal: str,
    pruner: str,
) -> SweepStudy:
    """`open_study`'s work, under its lock."""
    try:
        with warnings.catch_warnings():  # heartbeats are an experimental Optuna feature, and the one that fits
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
            )
    except Exception as error:
        shown = hide_password(url)
        raise SweepError(f"--storage {shown}: cannot open it as an Optuna study storage: {error}") from None
    direction = "minimize" if goal == "min" else "maximize"
    study_sampler = _sampler(sampler, seed, 0, {a.path: list(a.values) for a in axes})
    created = False
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, direction=direction, sampler=study_sampler, pruner=make_pruner(pruner)
        )
        for key, value in identity.items():
            study.set_user_attr(f"knightctl.{key}", value)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=study_sampler, pruner=make_pruner(pruner))
        _check_identity(study, name, url, identity)
    return SweepStudy(study, storage, url, name, axes, sampler, seed, budget, grid, created)


def make_pruner(kind: str, warmup_steps: int = 0) -> optuna.pruners.BasePruner:
    """`median`: a trial stops at an evaluation where its value is worse than the median of the
    completed trials' at the same step, once two trials completed and past its first `warmup_steps`
    steps; `none`: never."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup_steps)
    return optuna.pruners.NopPruner()


def study_key(spec_digest: str, axes: Sequence[Axis], sampler: str, metric: str, goal: str) -> str:
    """Names a sweep's default study: the same spec, space, sampler and ranking give the same study
    (so a rerun continues it); `--trials` and `--seed` may change between runs of one study."""
    space = json.dumps([[a.path, a.describe()] for a in axes])
    return hashlib.sha256("\n".join([spec_digest, space, sampler, metric, goal]).encode()).hexdigest()[:12]


def _check_identity(study: optuna.Study, name: str, url: str, identity: Mapping[str, str]) -> None:
    attrs = study.user_attrs
    for key in _IDENTITY:
        had, wants = attrs.get(f"knightctl.{key}"), identity.get(key)
        if had is not None and had != wants:
            raise SweepError(
                f"study {name!r} in {url} was made for another sweep: its {key} is {had}, this one's is {wants}; "
                "give another --study, or the same options as the study's"
            )


def _counts(t: optuna.trial.FrozenTrial, trials: Sequence[optuna.trial.FrozenTrial]) -> bool:
    """Whether trial `t` holds its place in the study: not void, and not a failure re-queued since."""
    if _VOID in t.user_attrs:
        return False
    return not (t.state == TrialState.FAIL and any(o.user_attrs.get(_RETRY_OF) == t.number for o in trials))


def _sampler(
    kind: str, seed: int, number: int, grid: Mapping[str, list[Any]] | None = None
) -> optuna.samplers.BaseSampler:
    """The sampler of the `number`th trial, seeded by the sweep's seed and that number."""
    if kind == "grid":
        return optuna.samplers.GridSampler(grid or {}, seed=seed)
    mixed = int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "little")
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=mixed)
    return optuna.samplers.TPESampler(seed=mixed)


class Pruning:
    """For a worker: the `train(stop_rule=...)` that reports `metric` at each evaluation to its trial of
    the study and ends training when the study's pruner says so; `reason` tells why, once it has."""

    def __init__(self, url: str, name: str, number: int, pruner: str, metric: str, warmup_steps: int = 0) -> None:
        storage = optuna.storages.RDBStorage(absolute_storage(url), engine_kwargs=_engine_kwargs(url))
        study = optuna.load_study(
            study_name=name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),
            pruner=make_pruner(pruner, warmup_steps),
        )
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), number)
        # Optuna's documented Trial(study, trial_id): the trial the sweep's own process asked for, so
        # that this process reports to it and asks its pruner (Trial.report, Trial.should_prune).
        self.trial = optuna.Trial(study, trial_id)
        self.pruner, self.metric = pruner, metric
        self.reason: str | None = None

    def __call__(self, step: int, metrics: Mapping[str, float]) -> str | None:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return None
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            self.reason = (
                f"pruned by the {self.pruner} pruner: {self.metric} {value:.4g} at step {step:,} was worse than "
                "the median of the completed trials at that step"
            )
        return self.reason


def pruning_rule(url: str, name: str, number: int, pruner: str, metric: str, warmup_steps: int = 0) -> Pruning | None:
    """The trial's `Pruning` (never before step `warmup_steps`), or None when the sweep prunes nothing."""
    return None if pruner == "none" else Pruning(url, name, number, pruner, metric, warmup_steps)


def _engine_kwargs(url: str) -> dict[str, Any]:
    return {"connect_args": {"timeout": _SQLITE_WAIT_S}} if url.startswith("sqlite") else {}
