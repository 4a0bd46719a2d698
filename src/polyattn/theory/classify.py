"""Structural rules of the poly-attention classification (DESIGN §1.4–§1.5). Pure Python, no torch.

Every rule returns a :class:`Claim`: a value, a one-line reason and the hypothesis it rests on.
``None`` values mean the theory is silent; no rule ever guesses.

Expressivity uses two kinds of evidence:

* **direct** — a cited result applies to the polynomial itself (trees, the triangle containing
  ``x1`` = Strassen attention, a single monomial containing ``x1`` of degree ≥ 3 = tensor
  attention, exactly ``x1*x2`` = self-attention); variables in no monomial are allowed for the
  *positive* results (give them all-ones values: they then contribute the constant factor 1);
* **restriction** — zeroing the query projection of every variable outside a set ``S`` (and giving
  those variables all-ones values) turns every monomial that touches them into ``0``, so the head
  computes exactly the poly-attention of the *induced* sub-polynomial ``h[S]``. Any task a
  restriction provably solves, the polynomial provably solves (with the same single head).
  Negative results never transfer this way, so they are only reported for the exact mechanisms.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..polynomial import AttentionPolynomial

__all__ = [
    "Claim",
    "UNCONDITIONAL",
    "SETH",
    "MAX2SAT",
    "COMMUNICATION",
    "SILENT",
    "eccentricity_from_x1",
    "has_triangle",
    "exact_quadratic",
    "exact_lower_bound",
    "approximate",
    "composition_depth",
    "match3",
    "RESTRICTION_LIMIT",
]

UNCONDITIONAL = "unconditional"
SETH = "SETH"
MAX2SAT = "Max-2SAT"
COMMUNICATION = "communication complexity"
SILENT = "none (theory is silent)"

#: for degree >= 3 the restriction search enumerates subsets of x2..xt; beyond this many variables
#: it is skipped (degree-2 polynomials use a direct induced-path search instead)
RESTRICTION_LIMIT = 14


@dataclass(frozen=True)
class Claim:
    """One classification item: ``value`` (``None`` = unknown), why, and the hypothesis used."""

    value: object
    reason: str
    hypothesis: str
    basis: str = "direct"  # "direct" | "restriction" | "none"

    def to_dict(self) -> dict:
        return {"value": self.value, "reason": self.reason, "hypothesis": self.hypothesis,
                "basis": self.basis}


# ------------------------------------------------------------------------------- structure
def _adjacency(monos: tuple[tuple[int, ...], ...], t: int) -> dict[int, set[int]]:
    adj: dict[int, set[int]] = {v: set() for v in range(1, t + 1)}
    for m in monos:
        for a in m:
            adj[a].update(b for b in m if b != a)
    return adj


def eccentricity_from_x1(p: AttentionPolynomial) -> int:
    """Edges on the longest simple path starting at ``x1`` in the graph of a tree polynomial.

    In a forest the longest path from ``x1`` is its depth when rooted at ``x1`` (breadth-first).
    """
    adj = _adjacency(p.monomials, p.num_variables)
    depth = {1: 0}
    frontier = [1]
    while frontier:
        nxt = []
        for u in frontier:
            for w in adj[u]:
                if w not in depth:
                    depth[w] = depth[u] + 1
                    nxt.append(w)
        frontier = nxt
    return max(depth.values())


def has_triangle(p: AttentionPolynomial) -> bool:
    """True if the degree-2 part of the graph contains a triangle (3 pairwise monomials)."""
    pairs = {m for m in p.monomials if len(m) == 2}
    verts = sorted({v for m in pairs for v in m})
    return any(
        (a, b) in pairs and (b, c) in pairs and (a, c) in pairs
        for a, b, c in itertools.combinations(verts, 3)
    )


def _is_triangle_on_x1(p: AttentionPolynomial) -> bool:
    """Exactly three pairwise monomials forming a triangle through x1 (others isolated)."""
    if len(p.monomials) != 3 or p.degree != 2:
        return False
    verts = sorted({v for m in p.monomials for v in m})
    return len(verts) == 3 and verts[0] == 1


def _is_tensor_on_x1(p: AttentionPolynomial) -> bool:
    """A single monomial of degree >= 3 containing x1 (others isolated)."""
    return len(p.monomials) == 1 and p.degree >= 3 and 1 in p.monomials[0]


def _is_exact_self_attention(p: AttentionPolynomial) -> bool:
    return p.monomials == ((1, 2),) and p.num_variables == 2


def _is_exact_strassen(p: AttentionPolynomial) -> bool:
    return p.monomials == ((1, 2), (1, 3), (2, 3)) and p.num_variables == 3


def _is_exact_tensor3(p: AttentionPolynomial) -> bool:
    return p.monomials == ((1, 2, 3),) and p.num_variables == 3


# ---------------------------------------------------------------------------------- exact
def exact_quadratic(p: AttentionPolynomial) -> Claim:
    if p.is_tree:
        return Claim(True, "tree polynomial: message passing from the leaves, one attention pass per "
                     "edge (n^2 time)", UNCONDITIONAL)
    why = f"degree {p.degree} monomial" if p.degree > 2 else "its graph has a cycle"
    return Claim(False, f"not a tree polynomial ({why}); exactly the tree polynomials are computable "
                 "in n^(2+o(1)) time", SETH)


def exact_lower_bound(p: AttentionPolynomial) -> Claim:
    """The strongest lower-bound statement the cited results give for exact computation."""
    k = p.degree
    parts: list[str] = []
    hyps: list[str] = []
    bound = None
    if k >= 3:
        bound = f"n^{k}"
        parts.append(f"a degree-{k} monomial needs n^({k}-o(1)) (k-OV)")
        hyps.append(SETH)
    if has_triangle(p):
        if bound is None:
            bound = "n^omega"
        parts.append("a triangle needs n^(omega-o(1)) (Max-2SAT -> weighted triangle)")
        hyps.append(MAX2SAT)
    if not p.is_tree:
        if bound is None:
            bound = "n^(2+eps)"
        parts.append("every non-tree polynomial is superquadratic")
        if SETH not in hyps:
            hyps.append(SETH)
        return Claim(bound, "; ".join(parts), ", ".join(hyps))
    if any(1 in m for m in p.monomials):
        return Claim("n^2", "quadratic is optimal: zeroing the other variables leaves exact attention "
                     "on a pair through x1, which needs n^(2-o(1)) for large entries", SETH)
    return Claim(None, "x1 is in no monomial (every output row is equal); no lower bound is cited "
                 "for this case", SILENT, basis="none")


# ------------------------------------------------------------------------------ approximate
def approximate(p: AttentionPolynomial) -> Claim:
    k = p.degree
    frac = "1/2" if k == 2 else f"1/{k}"
    return Claim(1.0 / k, f"almost-linear n^(1+o(1)) time (entry-wise 1/poly(n) error) iff entries "
                 f"B = o((log n)^({frac})), k = {k} is the degree (independent of t = "
                 f"{p.num_variables}); larger entries rule it out", f"{UNCONDITIONAL} (upper, "
                 f"polynomial method) / {SETH} (lower)")


# ------------------------------------------------------------------------------ expressivity
def _direct_composition(p: AttentionPolynomial) -> tuple[int, str, str] | None:
    """(r, reason, hypothesis) from a cited result about ``p`` itself, or None."""
    if p.is_tree:
        r = eccentricity_from_x1(p)
        if _is_exact_self_attention(p):
            return (1, "self-attention looks up one function; 2-fold composition needs "
                    "n^(1-o(1)) heads (Peng et al.)", COMMUNICATION)
        if r == 0:
            return None  # x1 in no monomial: the cited results (paths from x1) say nothing
        return (r, f"tree polynomial: the longest path from x1 has {r + 1} vertices, and the path "
                f"h_{r} along it composes {r} functions (explicit construction)", UNCONDITIONAL)
    if _is_triangle_on_x1(p):
        tight = " ; 3-fold needs n^(1-o(1)) heads" if _is_exact_strassen(p) else ""
        return (2, "Strassen attention (triangle through x1) composes 2 functions" + tight,
                UNCONDITIONAL + (f" (upper: {COMMUNICATION})" if tight else ""))
    if _is_tensor_on_x1(p):
        k = p.degree
        if k == 3:
            tight = " ; 3-fold needs n^(1-o(1)) heads" if _is_exact_tensor3(p) else ""
            return (2, "3-tensor attention composes 2 functions" + tight,
                    UNCONDITIONAL + (f" (upper: {COMMUNICATION})" if tight else ""))
        return (2, f"{k}-tensor attention with x4..x{k} set to all-ones rows is 3-tensor attention, "
                "which composes 2 functions; whether it composes 3 is not established", UNCONDITIONAL)
    return None


def _direct_match3(p: AttentionPolynomial) -> tuple[bool, str, str] | None:
    if _is_exact_self_attention(p):
        return (False, "one self-attention head cannot detect triples (Sanford et al.): needs "
                "embedding size x precision x heads >= n^(Omega(1))", COMMUNICATION)
    if _is_triangle_on_x1(p):
        return (True, "Strassen attention (triangle through x1) solves Match3 (Kozachinskiy et al.)",
                UNCONDITIONAL)
    if _is_tensor_on_x1(p):
        k = p.degree
        extra = "" if k == 3 else f" (x4..x{k} set to all-ones rows reduce {k}-tensor to 3-tensor)"
        return (True, f"tensor attention solves Match3 (Sanford et al.){extra}", UNCONDITIONAL)
    return None


def _restrictions(p: AttentionPolynomial):
    """Induced sub-polynomials h[S] for S containing x1 (largest first), with S."""
    t = p.num_variables
    others = list(range(2, t + 1))
    for size in range(len(others), -1, -1):
        for sub in itertools.combinations(others, size):
            s = {1, *sub}
            monos = [m for m in p.monomials if set(m) <= s]
            if not monos:
                continue
            yield AttentionPolynomial(monos, num_variables=t), tuple(sorted(s))


def _longest_induced_path_from_x1(p: AttentionPolynomial, budget: int = 200_000) -> tuple[int, ...]:
    """Vertices of a longest induced path starting at x1 in the graph of a degree-2 polynomial.

    Depth-first over induced paths (each new vertex is adjacent to the last one only). The search
    stops after ``budget`` extensions; the best path found so far is still a valid restriction.
    """
    adj = _adjacency(p.monomials, p.num_variables)
    best: tuple[int, ...] = (1,)
    steps = 0
    stack: list[tuple[int, ...]] = [(1,)]
    while stack and steps < budget:
        path_ = stack.pop()
        if len(path_) > len(best):
            best = path_
        last, inner = path_[-1], set(path_[:-1])
        for w in sorted(adj[last], reverse=True):  # LIFO: smaller variables are explored first
            if w in path_ or adj[w] & inner:
                continue
            steps += 1
            stack.append(path_ + (w,))
    return best


def _triangle_through_x1(p: AttentionPolynomial) -> tuple[int, int] | None:
    pairs = {m for m in p.monomials if len(m) == 2}
    nb = sorted(b for a, b in pairs if a == 1)
    for a, b in itertools.combinations(nb, 2):
        if (a, b) in pairs:
            return (a, b)
    return None


def _graph_restrictions(p: AttentionPolynomial):
    """For degree-2 polynomials: the two restrictions that matter (longest induced path from x1,
    a triangle through x1), without enumerating subsets."""
    t = p.num_variables
    path_ = _longest_induced_path_from_x1(p)
    if len(path_) > 1:
        s = set(path_)
        yield AttentionPolynomial([m for m in p.monomials if set(m) <= s], num_variables=t), tuple(sorted(s))
    tri = _triangle_through_x1(p)
    if tri is not None:
        s = {1, *tri}
        yield AttentionPolynomial([m for m in p.monomials if set(m) <= s], num_variables=t), tuple(sorted(s))


def _candidate_restrictions(p: AttentionPolynomial):
    if p.degree == 2:
        return _graph_restrictions(p)
    if p.num_variables <= RESTRICTION_LIMIT:
        return _restrictions(p)
    return iter(())


def _fmt_set(s: tuple[int, ...]) -> str:
    return "{" + ",".join(f"x{v}" for v in s) + "}"


def composition_depth(p: AttentionPolynomial) -> Claim:
    """Largest r for which one head provably performs r-fold function composition (or None)."""
    direct = _direct_composition(p)
    if direct is not None:
        return Claim(direct[0], direct[1], direct[2])
    best: tuple[int, str] | None = None
    for sub, s in _candidate_restrictions(p):
        d = _direct_composition(sub)
        if d is not None and (best is None or d[0] > best[0]):
            dropped = sorted(set(p.variables) - set(s))
            best = (d[0], f"zero the queries of {_fmt_set(tuple(dropped))}: the head becomes "
                    f"{sub} ({d[1].split(';')[0]}); whether more is possible is not established")
    if best is not None and best[0] > 0:
        return Claim(best[0], best[1], UNCONDITIONAL, basis="restriction")
    if not any(1 in m for m in p.monomials):
        return Claim(None, "x1 is in no monomial (every output row is equal); the cited results "
                     "compose along paths from x1 and do not apply", SILENT, basis="none")
    return Claim(None, "no cited composition result applies to this polynomial or to any "
                 "restriction of it", SILENT, basis="none")


def match3(p: AttentionPolynomial) -> Claim:
    """Whether one head provably solves Match3 (True), provably cannot (False), or unknown (None)."""
    direct = _direct_match3(p)
    if direct is not None:
        return Claim(direct[0], direct[1], direct[2])
    for sub, s in _candidate_restrictions(p):
        d = _direct_match3(sub)
        if d is not None and d[0]:
            dropped = sorted(set(p.variables) - set(s))
            return Claim(True, f"zero the queries of {_fmt_set(tuple(dropped))}: the head "
                         f"becomes {sub}, which solves Match3", UNCONDITIONAL, basis="restriction")
    return Claim(None, "no cited Match3 result applies to this polynomial or to any restriction "
                 "of it", SILENT, basis="none")
