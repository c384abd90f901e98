"""Fast mode of the reverse check: random projections tested in groups, refined where they disagree.

For a random cotangent u (entries +-[0.5, 1.5]) the analytic side is one backward, a = u^T J.
The input's elements are split into groups; for each group G and random weights c (+-[0.5, 1.5]),
the finite difference of u^T f along sum_{k in G} c_k e_k (two forward calls for all groups at
once) must equal sum_{k in G} c_k a_k to within theta = KAPPA * atol * min|u|. A group within
theta on both of two independent draws is cleared; one that is not is cut in 32, down to single
elements, which are judged as the exact rule judges projections (kinks included). So a correct
op costs a few batched calls instead of one per element, and a wrong element is found in about
log32(n) rounds.

Why a cleared group holds no failing element: if element k fails, its projected error e_k
exceeds its tolerance T_k >= atol * min|u| = theta / KAPPA. The group's discrepancy is c_k e_k
plus terms that do not depend on c_k, and c_k has density at most 1/2, so it lands within theta
with probability at most theta / |e_k| <= KAPPA (1e-2), and on both draws at most 1e-4; larger
errors are missed even less often. Finite-difference noise above theta only costs time: the group
is refined. When refinement does not narrow things down (more than a quarter of the elements
still suspect), the rest are judged one by one, as the exact rule does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from knightctl.gradcheck.compare import Tally
from knightctl.gradcheck.jacobian import _BATCH_ENTRIES, Target, batched_vjp, numeric_chunks

KAPPA = 1e-2  # theta as a share of the smallest tolerance: the miss probability per draw
GROUP_EPS = 1e-5  # step along a group direction: rounding ~1e-16/eps, truncation ~eps^2
DRAWS = 2
FIRST_GROUPS = 1  # a correct op is cleared by one group: two forward calls in all
SPLIT = 32  # a failing group is cut into this many: few rounds, since each costs two batched calls


def _signed(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Entries +-[0.5, 1.5]: never near 0, where an element's error would vanish from a sum."""
    magnitude = torch.rand(*shape, generator=generator, dtype=like.dtype).add_(0.5)
    sign = torch.rand(*shape, generator=generator, dtype=like.dtype).lt_(0.5).mul_(2).sub_(1)
    return (magnitude * sign).to(like.device)


def fast_reverse(
    live: Target,
    outs: Sequence[torch.Tensor],
    xs: Sequence[torch.Tensor],
    tallies: Sequence[Tally],
    sample: int,
    generator: torch.Generator,
) -> None:
    """Judge u^T J for every element of every input, testing groups first."""
    probes = [_signed((DRAWS, *out.shape), generator, out) for out in outs]
    projected, _ = batched_vjp(outs, xs, probes)  # u^T J for each input: (draws, *input shape)
    smallest = min(float(u.abs().min()) for u in probes) if probes else 1.0
    for i, x in enumerate(xs):
        tally = tallies[i]
        analytic = projected[i].reshape(DRAWS, -1)
        suspects = _suspects(live, outs, i, analytic, probes, KAPPA * tally.atol * smallest, generator)
        if len(suspects):
            _judge_elements(live, outs, i, analytic, probes, suspects, tally, sample, x.shape)


def _suspects(
    live: Target,
    outs: Sequence[torch.Tensor],
    which: int,
    analytic: torch.Tensor,
    probes: Sequence[torch.Tensor],
    theta: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The flat elements that no group test clears."""
    n = analytic.shape[1]
    weights = _signed((DRAWS, n), generator, analytic)
    groups = list(torch.arange(n, device=analytic.device).tensor_split(min(FIRST_GROUPS, n)))
    single: list[torch.Tensor] = []
    while groups:
        if sum(len(g) for g in groups) > n // 4 and len(groups) > SPLIT:  # more than one group failed
            single.extend(groups)  # refining does not narrow it down: judge these one by one
            break
        cleared = _cleared(live, outs, which, analytic, probes, weights, groups, theta)
        failing = [g for g, ok in zip(groups, cleared, strict=True) if not ok]
        single.extend(g for g in failing if len(g) == 1)
        groups = [part for g in failing if len(g) > 1 for part in g.tensor_split(min(SPLIT, len(g)))]
    return torch.cat(single) if single else torch.empty(0, dtype=torch.long)


def _cleared(
    live: Target,
    outs: Sequence[torch.Tensor],
    which: int,
    analytic: torch.Tensor,
    probes: Sequence[torch.Tensor],
    weights: torch.Tensor,
    groups: list[torch.Tensor],
    theta: float,
) -> list[bool]:
    """For each group, whether both draws agree to within theta; batched, a cache-sized block at a time."""
    position = live.wrt[which]
    x = live.args[position].detach()
    n = x.numel()
    per_batch = max(1, _BATCH_ENTRIES // (DRAWS * max([n, *(o.numel() for o in outs)])))
    cleared: list[bool] = []
    with torch.no_grad():
        for start in range(0, len(groups), per_batch):
            block = groups[start : start + per_batch]
            directions = torch.zeros(len(block), DRAWS, n, dtype=x.dtype, device=x.device)
            members = torch.cat(block)
            owner = torch.repeat_interleave(
                torch.arange(len(block), device=x.device), torch.tensor([len(g) for g in block], device=x.device)
            )
            directions[owner, :, members] = weights[:, members].T
            directions = directions.reshape(-1, n)  # (groups * draws, n)
            flat = x.reshape(1, n)
            up = live.call_batched(position, (flat + GROUP_EPS * directions).reshape(-1, *x.shape))
            down = live.call_batched(position, (flat - GROUP_EPS * directions).reshape(-1, *x.shape))
            numeric = torch.zeros(len(block), DRAWS, dtype=x.dtype, device=x.device)
            for u, f_up, f_down in zip(probes, up, down, strict=True):
                difference = (f_up - f_down).reshape(len(block), DRAWS, -1) / (2 * GROUP_EPS)
                numeric += (difference * u.reshape(1, DRAWS, -1)).sum(-1)
            expected = (directions.reshape(len(block), DRAWS, n) * analytic.reshape(1, DRAWS, n)).sum(-1)
            cleared.extend(((expected - numeric).abs() <= theta).all(dim=1).tolist())
    return cleared


def _judge_elements(
    live: Target,
    outs: Sequence[torch.Tensor],
    which: int,
    analytic: torch.Tensor,
    probes: Sequence[torch.Tensor],
    elements: torch.Tensor,
    tally: Tally,
    sample: int,
    in_shape: Sequence[int],
) -> None:
    """The per-element rule on projections: u^T J e_k against central and one-sided differences."""
    elements = elements.sort().values
    for chunk in numeric_chunks(live, outs, which, elements=elements):
        rows = len(chunk.elements)
        central = left = right = bound = torch.zeros(rows, DRAWS, dtype=analytic.dtype, device=analytic.device)
        for j, u in enumerate(probes):
            u_t = u.reshape(DRAWS, -1).T  # (out_numel, draws)
            chunk_left, chunk_right = chunk.left(j), chunk.right(j)
            central = central + chunk.central[j] @ u_t
            left, right = left + chunk_left @ u_t, right + chunk_right @ u_t
            support = ((chunk.central[j] != 0) | (chunk_left != 0) | (chunk_right != 0)).to(u.dtype)
            bound = bound + tally.atol * (support @ u_t.abs()) + tally.rtol * (chunk.central[j].abs() @ u_t.abs())
        bound = bound.clamp_min(tally.atol * float(min(u.abs().min() for u in probes)))  # T_k >= atol * min|u|
        tally.judge_projections(
            analytic[:, chunk.elements].T,
            central,
            left,
            right,
            bound,
            where=(sample, -1, which),
            elements=chunk.elements,
            in_shape=in_shape,
        )
