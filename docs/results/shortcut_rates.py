"""Test accuracies of the plateau shortcuts on r-fold composition (Monte Carlo, numpy only).

A model that composes only the last k of the r tables can do no better than predicting the most
frequent value of f_r∘…∘f_{r-k+1} over all inputs (ties split evenly). The plateaus seen in
training sit exactly at these rates:

    python docs/results/shortcut_rates.py            # r = 3, m = 8 and r = 2, m = 8 / 16 / 25
"""

from __future__ import annotations

import numpy as np


def shortcut_rates(r: int, m: int, samples: int = 20000, seed: int = 0) -> list[float]:
    """Accuracy of 'most frequent value of the composition of the last k tables', k = 1..r."""
    rng = np.random.default_rng(seed)
    tables = rng.integers(0, m, size=(samples, r, m))
    x = rng.integers(0, m, size=samples)
    rows = np.arange(samples)
    y = x
    for i in range(r):
        y = tables[rows, i, y]
    rates = []
    comp = tables[:, r - 1, :]  # f_r(a) for every a
    for k in range(1, r + 1):
        if k > 1:
            comp = np.take_along_axis(comp, tables[:, r - k, :], 1)  # prepend f_{r-k+1}
        acc = 0.0
        for vals, t in zip(comp, y):
            c = np.bincount(vals, minlength=m)
            best = np.flatnonzero(c == c.max())
            acc += float(t in best) / len(best)
        rates.append(acc / samples)
    return rates


if __name__ == "__main__":
    for r, m in [(3, 8), (2, 8), (2, 16), (2, 25), (3, 16)]:
        rates = shortcut_rates(r, m)
        print(f"r={r} m={m}: " + ", ".join(f"last {k} composed: {a:.3f}" for k, a in enumerate(rates, 1)))
