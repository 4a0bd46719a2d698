"""The a-priori error bound of the polynomial method and the feature maps it uses (pure Python).

See :mod:`polyattn.planning.approx` for the derivation: each monomial's ``exp`` is replaced by a
polynomial ``P`` (Chebyshev interpolant or even Taylor truncation) with a certified relative-error
interval ``[lo, hi]`` on ``[-X, X]``; the stated output bound is ``(U - L) / (2 L) * R``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import lru_cache

from ..errors import MethodError, PolyAttentionError

#: Tolerance used when ``method="approx"`` is called without ``tolerance=``.
DEFAULT_TOLERANCE = 1e-3
#: Largest Taylor degree the planner will choose.
MAX_DEGREE = 16
#: Largest feature rank ``C(d + p, p)`` the planner will accept (override with ``max_rank=``).
MAX_RANK = 2**15
#: Polynomial families replacing exp; the default reaches a tolerance with the lowest degree.
BASES = ("chebyshev", "taylor")
DEFAULT_BASIS = "chebyshev"


class ApproximationRangeError(MethodError):
    """The entries are too large (or the tolerance too small) for an affordable polynomial method."""


# ------------------------------------------------------------------------------- the bound
def taylor_ratio(x: float, p: int) -> float:
    """``f_p(x) = P_p(x) * exp(-x)`` with ``P_p`` the degree-``p`` Taylor polynomial of exp (float64).

    For even ``p`` this is positive and decreasing in ``x`` (derivative ``-x^p/p! e^{-x}``).
    """
    terms = []
    term = 1.0
    for i in range(p + 1):
        if i:
            term *= x / i
        terms.append(term)
    return math.fsum(terms) * math.exp(-x)


def _ratio_interval(xmax: float, p: int) -> tuple[float, float]:
    """``[f_p(X), f_p(-X)]`` widened by a few ulps of the summands so rounding cannot shrink it."""
    lo, hi = taylor_ratio(xmax, p), taylor_ratio(-xmax, p)
    pad = 8 * 2.0**-52 * math.exp(2 * xmax)  # |summands| * e^{|x|} <= e^{2X}
    return max(lo - pad, 0.0), hi + pad


@lru_cache(maxsize=4096)
def exp_coefficients(basis: str, degree: int, xmax: float) -> tuple[float, ...]:
    """Monomial coefficients ``a_0..a_p`` of the degree-``p`` polynomial replacing ``exp`` on ``[-X, X]``.

    ``"taylor"``: ``a_i = 1/i!`` (even ``p``: positive on all of R). ``"chebyshev"``: the interpolant
    of ``exp`` at the ``p + 1`` Chebyshev nodes of ``[-X, X]`` (near-minimax; any degree; positive on
    ``[-X, X]`` whenever its certified relative error is below 1, which the planner checks).
    """
    if basis == "taylor" or xmax < 1e-6:  # tiny range: Taylor is near-minimax and 1/X^i would overflow
        return tuple(1.0 / math.factorial(i) for i in range(degree + 1))
    if basis != "chebyshev":
        raise PolyAttentionError(f"basis must be one of {', '.join(BASES)}, got {basis!r}")
    n = degree + 1
    ts = [math.cos(math.pi * (j + 0.5) / n) for j in range(n)]
    fs = [math.exp(xmax * t) for t in ts]
    # Chebyshev series sum_k c_k T_k(x / X), then expanded in powers of x.
    cheb = []
    for k in range(n):
        ck = 2.0 / n * math.fsum(f * math.cos(k * math.pi * (j + 0.5) / n) for j, f in enumerate(fs))
        cheb.append(ck / 2 if k == 0 else ck)
    tk_prev, tk = [1.0], [0.0, 1.0]
    powers = [0.0] * n
    for k in range(n):
        poly = tk_prev if k == 0 else tk
        if k >= 2:
            nxt = [0.0] + [2 * c for c in tk]
            for i, c in enumerate(tk_prev):
                nxt[i] -= c
            tk_prev, tk = tk, nxt
            poly = tk
        for i, c in enumerate(poly):
            powers[i] += cheb[k] * c
    return tuple(c / xmax**i for i, c in enumerate(powers))


def _horner(a: Sequence[float], x: float) -> float:
    acc = 0.0
    for c in reversed(a):
        acc = acc * x + c
    return acc


@lru_cache(maxsize=4096)
def relative_error_interval(basis: str, degree: int, xmax: float, grid: int = 2048) -> tuple[float, float]:
    """Certified ``[lo, hi]`` with ``lo <= P(x) e^{-x} - 1 <= hi`` for every ``|x| <= X``.

    Even-degree Taylor: the closed form ``[f_p(X) - 1, f_p(-X) - 1]`` (``f_p`` is monotone). Otherwise:
    the extremes of ``h(x) = P(x) e^{-x} - 1`` on a uniform grid of spacing ``2X / grid``, widened by
    half a spacing times a bound on ``|h'| = |P'(x) - P(x)| e^{-x} <= e^X sum_i |b_i| X^i`` (``b`` the
    coefficients of ``P' - P``) plus a rounding margin: rigorous up to double rounding, which the
    margin covers.
    """
    if basis == "taylor" and degree % 2 == 0:
        lo, hi = _ratio_interval(xmax, degree)
        return lo - 1.0, hi - 1.0
    a = exp_coefficients(basis, degree, xmax)
    if xmax <= 0.0:
        return 0.0, 0.0
    def diff_minus(c: Sequence[float]) -> list[float]:  # coefficients of C' - C
        return [((i + 1) * c[i + 1] if i + 1 < len(c) else 0.0) - c[i] for i in range(len(c))]

    b = diff_minus(a)  # h'  = (P' - P) e^{-x}
    b2 = diff_minus(b)  # h'' = (P'' - 2P' + P) e^{-x}
    vals, dvals = [], []
    for j in range(grid + 1):
        x = -xmax + 2.0 * xmax * j / grid
        e = math.exp(-x)
        vals.append(_horner(a, x) * e - 1.0)
        dvals.append(abs(_horner(b, x) * e))
    half = xmax / grid  # every point of [-X, X] is within half a spacing of a grid point
    eX = math.exp(xmax)
    d2max = eX * sum(abs(c) * xmax**i for i, c in enumerate(b2))
    size = eX * sum(abs(c) * xmax**i for i, c in enumerate(a)) + eX * sum(abs(c) * xmax**i for i, c in enumerate(b))
    d1max = max(dvals) + half * d2max + 64 * 2.0**-52 * size
    corr = half * d1max + 64 * 2.0**-52 * (1.0 + size)
    return min(vals) - corr, max(vals) + corr


def error_bound(logit_bound: Sequence[float], degree: int, radius: float, basis: str = "chebyshev") -> float:
    """A-priori max abs output error ``(U - L) / (2 L) * R`` (module docstring).

    ``logit_bound[m]`` bounds ``|s * <monomial m>|`` over all tuples; ``radius`` is the value radius;
    ``[L, U]`` is the product over monomials of the certified intervals ``1 + [lo_m, hi_m]``.
    """
    _check_degree(degree, basis)
    lo, hi = 1.0, 1.0
    for x in logit_bound:
        a, b = relative_error_interval(basis, degree, float(x))
        if not (1.0 + a > 0.0 and math.isfinite(b)):  # not certified positive on [-X, X]
            return math.inf
        lo *= 1.0 + a
        hi *= 1.0 + b
    if lo <= 0.0:
        return math.inf
    return (hi - lo) / (2.0 * lo) * radius


def _check_degree(degree: object, basis: str) -> None:
    if basis not in BASES:
        raise PolyAttentionError(f"basis must be one of {', '.join(repr(b) for b in BASES)}, got {basis!r}")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
        raise PolyAttentionError(f"degree must be a non-negative integer, got {degree!r}")
    if basis == "taylor" and degree % 2:
        raise PolyAttentionError(
            f"degree={degree}: basis='taylor' needs an even degree (odd Taylor polynomials of exp go "
            "negative); use an even degree or basis='chebyshev'"
        )


def _degrees(basis: str, max_degree: int) -> range:
    return range(0, max_degree + 1, 2 if basis == "taylor" else 1)


def feature_rank(d: int, degree: int) -> int:
    """``r = C(d + p, p)``: the number of multi-indices ``alpha in N^d`` with ``|alpha| <= p``."""
    return math.comb(d + degree, degree)


@lru_cache(maxsize=32)
def feature_table(d: int, degree: int) -> tuple[tuple[tuple[int, ...], ...], tuple[float, ...], tuple[int, ...]]:
    """Tables to build the features ``Q^alpha`` degree by degree with contiguous slices.

    A multi-index ``alpha`` is a sorted coordinate tuple ``c_1 <= ... <= c_i``. Features are ordered
    by degree, and inside degree ``i`` *colexicographically* (by ``c_i``, then by the rest): the
    degree-``(i-1)`` tuples with largest coordinate ``<= c`` are then a prefix of length
    ``C(c + i - 1, i - 1)`` of their list, so ``F_i = [F_{i-1}[:counts[c]] * Q[c] for c < d]``.
    Returns ``(counts, inv_alpha_fact, degrees)``: ``counts[i-2][c]`` for degrees ``i >= 2``,
    ``1/alpha!`` and ``|alpha|`` for all ``r = C(d+p, p)`` features (degree 0 and 1 first).
    """
    counts: list[tuple[int, ...]] = []
    prev: list[tuple[int, ...]] = [(c,) for c in range(d)] if degree >= 1 else []
    inv_fact: list[float] = [1.0] + [1.0] * len(prev)
    degs: list[int] = [0] + [1] * len(prev)
    for i in range(2, degree + 1):
        cnt = tuple(math.comb(c + i - 1, i - 1) for c in range(d))
        cur = [tup + (c,) for c in range(d) for tup in prev[: cnt[c]]]
        counts.append(cnt)
        for tup in cur:
            f = 1
            for _, grp in itertools.groupby(tup):
                f *= math.factorial(len(list(grp)))
            inv_fact.append(1.0 / f)
            degs.append(i)
        prev = cur
    return tuple(counts), tuple(inv_fact), tuple(degs)


