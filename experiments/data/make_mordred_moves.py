"""Write `mordred_moves.csv`: 600 of Mordred's past moves, for `experiments/mordred.yaml`.

Each row is one night on which Mordred moved against Camelot, as the knights' scouts recorded it.
The features are in units chosen so that every value lies between 0 and about 4, and a small MLP
needs no normalisation layer:

    distance_100km      how far Mordred's camp is from Camelot, in hundreds of km   (0 to 3)
    army_thousands      the size of his army, in thousands of men                   (0.2 to 3)
    weeks_since_raid    weeks since his last raid on the kingdom                    (0 to 3)
    moon_age_weeks      weeks since the last new moon: full at 2.1, new again at 4.2 (0 to 4.2)

The target `move` is one of `attack`, `feint` or `retreat`, decided by Mordred's habits:

* He **attacks** when he is strong enough for the march. His strength, in thousands of men, is
  his army, plus the 300 men a week of quiet lets him gather, less what the march costs him in
  desertion and spent supplies, a cost that grows with the square of the distance:
  strength = army_thousands + 0.3 * weeks_since_raid - 0.6 * distance_100km**2; attack if > 0.8.
* Otherwise he **feints** (a show of force to draw the knights out) if the moon is nearly full,
  when the watchmen on Camelot's towers can see his banners from afar and take a few hundred men
  for a host: within 0.55 weeks (about four days) of the full moon, |moon_age_weeks - 2.1| < 0.55.
* Otherwise he **retreats**.

The attack boundary is curved and the feint nights lie in the middle of the moon's cycle, with
retreat on both sides, so retreat is not a convex region: no linear model can carve the classes
apart (one reaches about 0.75 validation accuracy, the majority class 0.41), while the MLP of
experiments/mordred.yaml reaches about 0.89. Mordred is not perfectly predictable: his strength
is judged with Gaussian noise (standard deviation 0.15, in thousands of men) and 5% of moves are
replaced by a move chosen at random, which caps the achievable accuracy at about 0.93.

The generator is deterministic (numpy's PCG64 with a fixed seed), so running it again rewrites
the same file byte for byte:

    python experiments/data/make_mordred_moves.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SEED = 1537  # fixed, so the CSV is reproducible; any other seed tells the same story
N_ROWS = 600
MOVES = ("attack", "feint", "retreat")
LUNAR_MONTH_WEEKS = 29.53 / 7  # new moon to new moon
OUTPUT = Path(__file__).with_name("mordred_moves.csv")


def make_moves(n_rows: int = N_ROWS, seed: int = SEED) -> tuple[np.ndarray, list[str]]:
    """Return (features (n_rows, 4), moves) following the rule in the module docstring."""
    rng = np.random.default_rng(seed)
    distance = rng.uniform(0.0, 3.0, n_rows)
    army = rng.uniform(0.2, 3.0, n_rows)
    weeks = rng.uniform(0.0, 3.0, n_rows)
    moon_age = rng.uniform(0.0, LUNAR_MONTH_WEEKS, n_rows)
    strength = army + 0.3 * weeks - 0.6 * distance**2 + rng.normal(0.0, 0.15, n_rows)
    feint_night = np.abs(moon_age - LUNAR_MONTH_WEEKS / 2) < 0.55
    move = np.where(strength > 0.8, 0, np.where(feint_night, 1, 2))
    whim = rng.random(n_rows) < 0.05  # Mordred's whims: a move chosen at random
    move = np.where(whim, rng.integers(0, len(MOVES), n_rows), move)
    features = np.column_stack([distance, army, weeks, moon_age])
    return features, [MOVES[i] for i in move]


def main() -> None:
    features, moves = make_moves()
    with OUTPUT.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["distance_100km", "army_thousands", "weeks_since_raid", "moon_age_weeks", "move"])
        for row, move in zip(features, moves, strict=True):
            writer.writerow([f"{value:.3f}" for value in row] + [move])
    counts = {name: moves.count(name) for name in MOVES}
    print(f"wrote {len(moves)} rows to {OUTPUT}: {counts}")


if __name__ == "__main__":
    main()
