"""knightctl's gradient checker against torch.autograd.gradcheck: seconds, ratios and verdicts.

Three measurements, in this process, on one pinned CPU with one torch thread (this VM's speed
swings by up to 2x when a thread migrates between its two vCPUs; see train_overhead.py):

1. Plugin ops: `check_ops(system)` over every op of the example plugins in ./plugins, which is
   what `knightctl gradcheck` runs. It goes first, so that its first call is really cold (lazy
   imports, torch's first vmap and autograd calls, torch.library.opcheck); the second call is warm.
   Printed per op: verdict, seconds, and each check's status and seconds. Target: <= 10 s.
2. Exact verdict speed: knightctl's first-order check with every check on (`check_op(...,
   order=1, method="exact")`: mutation, grad metadata, the whole analytic Jacobian by batched
   vector-Jacobian products against all central differences batched with vmap, undefined grad,
   linearity and reentrant) against `torch.autograd.gradcheck(fast_mode=False)`
   (its defaults otherwise), on squareplus (x + sqrt(x^2 + 4)) / 2, a plain differentiable
   function, at each size (default 1000 and 10000 float64 elements, x = 3 * randn, seeded). Both
   use eps 1e-6, atol 1e-5, rtol 1e-3 (torch's defaults). Runs go in pairs in A-B-B-A order (knightctl
   first in even pairs), after a warm-up of both at 100 elements; sizes of 5000 and up get one
   pair, since torch takes about half a minute per run at 10000. The figures are medians, the
   median of the pairs' torch/knightctl ratios, and the ratio of the fastest runs. Target: >= 10x
   at 1000. Peak memory is the rise of the process's peak RSS (VmHWM, reset before each run) above
   its RSS at the start of the run: both checkers hold dense n x n float64 Jacobians (800 MB at
   n = 10000); small figures are a lower bound, as freed memory the process still holds is reused.
3. A wrong op at 1000 elements: squareplus as an autograd.Function (with a generated vmap rule)
   whose backward is 1% too large. Exact mode of both must fail it. Also shown: torch's fast mode
   (one random projection v^T J u, its tolerance scaled by sum(u) * sum(v)) and knightctl's fast
   mode (random projections tested on groups of elements, refined where they disagree), each
   over several seeds, on a correct op, on one 1% wrong at a single element and on one 1% wrong
   everywhere; knightctl's fast mode must catch both wrong ones on every seed.

Speed is reported, never asserted.

    python benchmarks/gradcheck_speed.py [--sizes 1000,10000] [--pairs 5] [--skip-torch-10000]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from knightctl import OpDef
from knightctl.gradcheck import check_op, check_ops
from knightctl.plugins.loader import load
from knightctl.plugins.system import PluginSettings

ROOT = Path(__file__).resolve().parent.parent
EPS, ATOL, RTOL = 1e-6, 1e-5, 1e-3  # torch.autograd.gradcheck's defaults, knightctl's EPS
LARGE = 5000  # sizes from here on get one pair of runs
WRONG_SIZE = 1000


def squareplus(x: torch.Tensor) -> torch.Tensor:
    return (x + torch.sqrt(x * x + 4)) / 2


class WrongSquareplus(torch.autograd.Function):
    """squareplus with a backward 1% too large (1.01 * the true derivative)."""

    generate_vmap_rule = True  # so that both checkers can batch it

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return squareplus(x)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return grad * (1 + x / torch.sqrt(x * x + 4)) / 2 * 1.01  # deliberately wrong: the 1.01


def wrong_squareplus(x: torch.Tensor) -> torch.Tensor:
    return WrongSquareplus.apply(x)


class OneWrongSquareplus(WrongSquareplus):
    """squareplus whose backward is 1% too large at one element only (index 417)."""

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        scale = torch.ones_like(x)
        scale[..., 417] = 1.01
        return grad * (1 + x / torch.sqrt(x * x + 4)) / 2 * scale


def one_wrong_squareplus(x: torch.Tensor) -> torch.Tensor:
    return OneWrongSquareplus.apply(x)


def sample(n: int, seed: int = 0) -> torch.Tensor:
    return 3 * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # Linux: reset VmHWM (peak RSS) to the current RSS
    except OSError:
        pass


class Run:
    """One timed check: seconds, verdict ("passed"/"failed") and the rise in peak RSS (MiB)."""

    def __init__(self, check: Callable[[], str]) -> None:
        gc.collect()
        _reset_peak()
        before = _rss_kib("VmRSS")
        started = time.perf_counter()
        self.verdict = check()
        self.seconds = time.perf_counter() - started
        peak = _rss_kib("VmHWM")
        self.peak_mib = (peak - before) / 1024 if peak is not None and before is not None else float("nan")


def knightctl_check(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, method: str, seed: int = 0) -> str:
    """check_op at order 1 with every first-order check on: mutation, grad metadata, reverse,
    undefined grad, linearity, reentrant (forward mode and vmap off, as torch's defaults have them)."""
    del seed  # the projections are seeded per sample inside knightctl
    op = OpDef(
        name="bench::op", fn=fn, sample_inputs=lambda device, dtype: [(x,)], forward_mode=False, vmap=False, layer=None
    )
    return check_op(op, order=1, method=method, atol=ATOL, rtol=RTOL, library=False).verdict


def torch_check(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, fast: bool, seed: int = 0) -> str:
    leaf = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)  # fast mode draws its projections from the global generator
    ok = torch.autograd.gradcheck(fn, (leaf,), eps=EPS, atol=ATOL, rtol=RTOL, fast_mode=fast, raise_exception=False)
    return "passed" if ok else "failed"


def pinned(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def plugin_ops(rows: list[tuple[str, str, str, str, str]]) -> None:
    print("\n== plugin ops: check_ops(system) over ./plugins (what `knightctl gradcheck` runs) ==")
    started = time.perf_counter()
    system = load(PluginSettings(dirs=(ROOT / "plugins",)))
    print(
        f"plugin load {time.perf_counter() - started:.3f} s; {len(system.registry.ops())} ops; "
        f"failures: {len(system.failures)}"
    )
    for call in ("cold", "warm"):
        started = time.perf_counter()
        reports = check_ops(system)
        total = time.perf_counter() - started
        print(f"-- {call} (call {1 if call == 'cold' else 2}): {total:.3f} s for {len(reports)} ops")
        for report in reports:
            checks = "  ".join(
                f"{c.check}:{c.status}{'/' + c.method if c.method else ''} {c.seconds:.3f}" for c in report.checks
            )
            rest = report.seconds - sum(c.seconds for c in report.checks)
            print(f"   {report.name:<22} {report.verdict:<6} {report.seconds:7.3f} s  ({checks}; other {rest:.3f})")
        verdicts = ", ".join(sorted({r.verdict for r in reports}))
        rows.append((f"plugin ops, {call}", fmt_s(total), "-", "target <= 10 s", f"{len(reports)} ops: {verdicts}"))


def exact_speed(n: int, pairs: int, skip_torch: bool, rows: list[tuple[str, str, str, str, str]]) -> None:
    x = sample(n)
    ours: list[Run] = []
    theirs: list[Run] = []
    ratios = []
    for pair in range(pairs):
        order = ("k", "t") if pair % 2 == 0 else ("t", "k")
        got = {}
        for who in order:
            if who == "k":
                got[who] = Run(lambda: knightctl_check(squareplus, x, "exact"))
            elif not skip_torch:
                got[who] = Run(lambda: torch_check(squareplus, x, fast=False))
        ours.append(got["k"])
        if "t" in got:
            theirs.append(got["t"])
            ratios.append(got["t"].seconds / got["k"].seconds)
    k_med = statistics.median(r.seconds for r in ours)
    k_verdicts = sorted({r.verdict for r in ours})
    line = (
        f"n={n:<6} {pairs} pair(s)  knightctl exact {k_med:8.3f} s "
        f"(peak +{max(r.peak_mib for r in ours):,.0f} MiB, {'/'.join(k_verdicts)})"
    )
    if theirs:
        t_med = statistics.median(r.seconds for r in theirs)
        t_verdicts = sorted({r.verdict for r in theirs})
        agree = "agree" if k_verdicts == t_verdicts == ["passed"] else "DISAGREE"
        best = min(r.seconds for r in theirs) / min(r.seconds for r in ours)
        line += (
            f"  torch {t_med:8.3f} s (peak +{max(r.peak_mib for r in theirs):,.0f} MiB, {'/'.join(t_verdicts)})"
            f"  torch/knightctl: median pair {statistics.median(ratios):.2f}x, best-run {best:.2f}x  verdicts {agree}"
        )
        rows.append(
            (
                f"exact, squareplus n={n}",
                fmt_s(k_med),
                fmt_s(t_med),
                f"{statistics.median(ratios):.2f}x",
                f"{'/'.join(k_verdicts)} vs {'/'.join(t_verdicts)} ({agree})",
            )
        )
    else:
        line += "  torch skipped"
        rows.append((f"exact, squareplus n={n}", fmt_s(k_med), "skipped", "-", f"{'/'.join(k_verdicts)} vs -"))
    print(line, flush=True)


def wrong_op(seeds: int, rows: list[tuple[str, str, str, str, str]]) -> None:
    print(f"\n== wrong op (backward 1% too large), n={WRONG_SIZE}: every verdict should be 'failed' ==")
    x = sample(WRONG_SIZE, seed=1)
    k_exact = Run(lambda: knightctl_check(wrong_squareplus, x, "exact"))
    t_exact = Run(lambda: torch_check(wrong_squareplus, x, fast=False))
    print(
        f"exact   knightctl {k_exact.verdict:<6} {k_exact.seconds:.3f} s   "
        f"torch (fast_mode=False) {t_exact.verdict:<6} {t_exact.seconds:.3f} s"
    )
    ratio = t_exact.seconds / k_exact.seconds
    rows.append(
        (
            f"exact, wrong op n={WRONG_SIZE}",
            fmt_s(k_exact.seconds),
            fmt_s(t_exact.seconds),
            f"{ratio:.2f}x",
            f"{k_exact.verdict} vs {t_exact.verdict}",
        )
    )
    for label, fn in (
        ("correct op", squareplus),
        ("1% wrong at one element", one_wrong_squareplus),
        ("1% wrong everywhere", wrong_squareplus),
    ):
        k_fast = [Run(lambda s=s, fn=fn: knightctl_check(fn, x, "fast", seed=s)) for s in range(seeds)]  # type: ignore[misc]
        t_fast = [Run(lambda s=s, fn=fn: torch_check(fn, x, fast=True, seed=s)) for s in range(seeds)]  # type: ignore[misc]
        k_med = statistics.median(r.seconds for r in k_fast)
        t_med = statistics.median(r.seconds for r in t_fast)
        k_verdicts = "/".join(sorted({r.verdict for r in k_fast}))
        t_verdicts = "/".join(sorted({r.verdict for r in t_fast}))
        print(
            f"fast, {label:<24} knightctl {k_verdicts:<6} {k_med:.4f} s   "
            f"torch (fast_mode=True) {t_verdicts:<6} {t_med:.4f} s   "
            f"knightctl/torch {k_med / t_med:.2f}x"
        )
        rows.append(
            (
                f"fast, {label} n={WRONG_SIZE}",
                fmt_s(k_med),
                fmt_s(t_med),
                f"{t_med / k_med:.2f}x",
                f"{k_verdicts} vs {t_verdicts} over {seeds} seeds",
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="1000,10000", help="comma-separated input sizes for the exact speed comparison"
    )
    parser.add_argument(
        "--pairs", type=int, default=5, help=f"A-B pairs per size below {LARGE} (one pair from there on)"
    )
    parser.add_argument(
        "--skip-torch-10000", action="store_true", help="skip torch's runs at sizes >= 10000 (~30 s each)"
    )
    parser.add_argument("--seeds", type=int, default=10, help="seeds for the fast modes on the wrong op")
    parser.add_argument("--no-plugins", action="store_true", help="skip the plugin ops")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    torch.set_num_threads(1)  # as the tests run (OMP_NUM_THREADS=1)
    cpu = max(os.sched_getaffinity(0))
    pinned(cpu)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, 1 torch thread pinned to CPU {cpu}; "
        f"eps {EPS}, atol {ATOL}, rtol {RTOL}"
    )
    rows: list[tuple[str, str, str, str, str]] = []
    if not args.no_plugins:
        plugin_ops(rows)
    print(
        "\n== exact verdict speed: knightctl check_op(order=1, method='exact') "
        "vs torch.autograd.gradcheck(fast_mode=False), squareplus; target >= 10x at 1000 =="
    )
    warm = sample(100)
    knightctl_check(squareplus, warm, "exact")
    torch_check(squareplus, warm, fast=False)
    for n in sizes:
        exact_speed(n, args.pairs if n < LARGE else 1, args.skip_torch_10000 and n >= 10000, rows)
    wrong_op(args.seeds, rows)
    header = ("case", "knightctl", "torch", "torch/knightctl", "verdicts (knightctl vs torch)")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print("\n== summary ==")
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
