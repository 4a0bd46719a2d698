r"""``method="approx"``: almost-linear poly-attention by the polynomial method (DESIGN §2).

Each monomial's ``exp(x_m)`` becomes the even Taylor polynomial ``P_p(x_m)``, which factorises as
``sum_alpha coef[alpha] prod_{v in m} F_v[l_v, alpha]`` with ``F_v[l, alpha] = Q_v[l]^alpha``
(symmetric tensor powers, rank ``r = C(d+p, p)``) and ``coef[alpha] = a_|alpha| s^|alpha| |alpha|!/alpha!``
for the polynomial ``P(x) = sum_i a_i x^i`` (Chebyshev interpolant or Taylor); see
:mod:`polyattn.planning.approx` for the a-priori error bound and the degree choice.

Every value carries an extra all-ones channel (the normaliser), so one contraction gives numerator
and denominator; ``P_p > 0`` makes the denominator positive. Sums over a variable's rows are means
(divided by ``n_v``) so nothing overflows however long the sequences are.

* **Tree factor graphs** (monomials of degree 2 forming a forest, plus causal pairs): message
  passing in feature space, leaves first. For edge (parent u, child c) the child's message
  ``m_c = V_c (*) prod_g e_{g->c}`` is summarised as ``A_c = coef * F_c^T m_c / n_c`` (``r x (dv+1)``)
  and the parent receives ``e_{c->u} = F_u A_c``: ``O(n r (dv+1))`` per edge, computed in row chunks
  (autograd recomputes each chunk's features in backward, so memory stays bounded).
  Causal edges (``l_c <= l_u`` or ``l_u <= l_c``) use prefix (suffix) sums of ``F_c (x) m_c`` over
  blocks of rows, linear-attention style, still ``O(n r (dv+1))``.
* **Other polynomials** (cycles, degree >= 3): one einsum over all features, values and
  coefficients, contracted along the opt_einsum path stored in the plan.

Pair masks are rejected by the planner (they do not factor through the features).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import opt_einsum
import torch
from torch.utils.checkpoint import checkpoint

from ..errors import PolyAttentionError
from ..planning import Plan
from ..planning.approx import DEFAULT_BASIS, ApproxPlan, ApproxStats, feature_table, plan_approx
from .inputs import Problem

__all__ = ["approx_attention", "approx_hook", "measure", "Features", "APPROX_OPTIONS"]

#: keyword options ``poly_attention(..., method="approx", **options)`` accepts
APPROX_OPTIONS = ("tolerance", "degree", "basis", "max_rank")


class Features:
    """``F(q)[..., alpha] = q^alpha`` for all ``|alpha| <= p`` (order of :func:`feature_table`).

    Built feature-major (``[..., r, rows]``, contiguous slices, one broadcast multiply per
    coordinate and degree) and returned as a transposed view ``[..., rows, r]`` for BLAS.
    """

    def __init__(self, d: int, degree: int, scale: float, device: torch.device, dtype: torch.dtype) -> None:
        counts, inv_fact, degs = feature_table(d, degree)
        self.degree = degree
        self.counts = counts
        self.scale, self.inv_fact, self.degs = scale, inv_fact, degs
        self.dtype, self.device = dtype, device
        self.rank = len(inv_fact)

    def coef(self, a: tuple[float, ...]) -> torch.Tensor:
        """``coef[alpha] = a_{|alpha|} s^{|alpha|} |alpha|! / alpha!`` so that ``P(x_m) = sum coef prod_v F_v``."""
        vals = [a[k] * self.scale**k * math.factorial(k) * f for f, k in zip(self.inv_fact, self.degs)]
        return torch.tensor(vals, dtype=self.dtype, device=self.device)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and q.requires_grad):
            return self._into_buffer(q)
        qt = q.transpose(-1, -2)  # [..., d, rows]
        blocks = [torch.ones_like(qt[..., :1, :])]
        if self.degree >= 1:
            qt = qt.contiguous()
            blocks.append(qt)
        prev = qt
        for cnt in self.counts:
            prev = torch.cat([prev[..., :k, :] * qt[..., c : c + 1, :] for c, k in enumerate(cnt)], dim=-2)
            blocks.append(prev)
        return torch.cat(blocks, dim=-2).transpose(-1, -2)

    def _into_buffer(self, q: torch.Tensor) -> torch.Tensor:
        """Same features written in place into one buffer (no concatenation copies; no autograd)."""
        qt = q.transpose(-1, -2)
        d = qt.shape[-2]
        out = torch.empty(*qt.shape[:-2], self.rank, qt.shape[-1], dtype=q.dtype, device=q.device)
        out[..., 0, :] = 1
        if self.degree >= 1:
            out[..., 1 : 1 + d, :] = qt
        prev, off = 1, 1 + d
        for cnt in self.counts:
            start = off
            for c, k in enumerate(cnt):
                torch.mul(out[..., prev : prev + k, :], out[..., 1 + c : 2 + c, :], out=out[..., off : off + k, :])
                off += k
            prev = start
        return out.transpose(-1, -2)


def _ones_features(q: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(q[..., :1])


def _ones_pair(qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
    return torch.ones(*torch.broadcast_shapes(qa.shape[:-2], qb.shape[:-2]), qa.shape[-2], qb.shape[-2],
                      dtype=qa.dtype, device=qa.device)


# ----------------------------------------------------------------------------- statistics
def measure(prob: Problem) -> ApproxStats:
    """Entry bound, row norms, per-coordinate maxima and value ranges of the actual tensors.

    Slightly inflated (a few ulps of the compute dtype) so that rounding in the reductions cannot
    make the a-priori bound optimistic.
    """
    eps = torch.finfo(prob.dtype).eps
    grow = 1.0 + 8 * eps
    d = prob.spec.head_dim
    with torch.no_grad():
        ent, nrm, crd = [], [], []
        for v in range(1, prob.t + 1):
            q = prob.q[v].detach()  # type: ignore[union-attr]
            a = q.abs().reshape(-1, d).amax(0).double()
            crd.append(tuple(x * grow for x in a.tolist()))
            ent.append(float(a.max()) * grow)
            nrm.append(float(q.double().norm(dim=-1).max()) * grow)
        lo: list[tuple[float, ...] | None] = [None]
        hi: list[tuple[float, ...] | None] = [None]
        for v in range(2, prob.t + 1):
            x = prob.v[v]
            if x is None:
                lo.append(None)
                hi.append(None)
                continue
            x = x.detach().reshape(-1, x.shape[-1]).double()
            lo.append(tuple(x.amin(0).tolist()))
            hi.append(tuple(x.amax(0).tolist()))
    return ApproxStats(tuple(ent), tuple(nrm), tuple(crd), tuple(lo), tuple(hi))


def approx_hook(prob: Problem, plan: Plan, options: Mapping[str, object]) -> ApproxPlan:
    """Turn the structure-only plan into the data-dependent one (degree, rank, bound)."""
    unknown = sorted(set(options) - set(APPROX_OPTIONS))
    if unknown:
        raise PolyAttentionError(
            f"unexpected keyword argument(s) {', '.join(unknown)} for method='approx'; "
            f"it accepts {', '.join(APPROX_OPTIONS)}"
        )
    tol = options.get("tolerance")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0):
        raise PolyAttentionError(f"tolerance must be a positive float, got {tol!r}")
    kw: dict = {}
    if "max_rank" in options:
        kw["max_rank"] = int(options["max_rank"])  # type: ignore[arg-type]
    budget = getattr(plan, "memory_budget", None)
    if budget is not None:
        kw["memory_budget"] = budget
    return plan_approx(
        prob.spec,
        stats=measure(prob),
        scale=prob.scale,
        tolerance=None if tol is None else float(tol),
        degree=options.get("degree"),  # type: ignore[arg-type]
        basis=str(options.get("basis", DEFAULT_BASIS)),
        requested=plan.requested,
        **kw,
    )


# ----------------------------------------------------------------------------- helpers
def _needs_grad(*xs: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


def _run(fn: Callable, *args: torch.Tensor):  # noqa: ANN202
    """Call ``fn``; under autograd recompute it in backward instead of storing its features."""
    if _needs_grad(*args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _value_ext(prob: Problem, v: int) -> torch.Tensor:
    """``[..., n_v, dv+1]``: the value with the all-ones normaliser channel (all ones if value-less)."""
    x = prob.v[v]
    n = prob.n(v)
    if x is None:
        return torch.ones(n, prob.dv + 1, dtype=prob.dtype, device=prob.device)
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def _finish(m1: torch.Tensor, prob: Problem) -> torch.Tensor:
    num, den = m1[..., :-1], m1[..., -1:]
    ok = den > 0
    out = torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))
    return out.expand(*prob.batch_shape, prob.n(1), out.shape[-1])


# ----------------------------------------------------------------------------- tree strategy
def _pad_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[-2])) if x.shape[-2] < n else x


def _prefix_message(
    fu: Callable, fc: Callable, coef: torch.Tensor, q_u: torch.Tensor, q_c: torch.Tensor,
    m_c: torch.Tensor, n_u: int, n_c: int, block: int, reverse: bool, chunk: int,
    pair: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``e[l_u] = (1/n_c) sum_{l_c <= l_u} P(x) m_c[l_c]`` (``reverse``: over ``l_c >= l_u``).

    Chunked linear attention (prefix sums over blocks): both sequences are zero-padded to a common
    multiple ``N`` of ``block`` (padded child rows carry ``m = 0``; padded parent rows are dropped);
    ``reverse`` flips them, turning the suffix condition into a prefix one. Per block, the
    running state ``S = sum_{earlier blocks} coef F_c^T m_c`` serves every row through ``F_u S``, and
    the block itself is done densely with a triangular mask, ``(P(s Q_u Q_c^T) * tril) @ m_c`` —
    ``pair`` evaluates the polynomial on the ``d``-dimensional logits, equal to ``F_u coef F_c^T``
    but ``r/d`` times cheaper; blocks are batched ``chunk`` rows at a time.
    Cost ``O(n (r dv + block (d + dv)))``. Returns ``[..., n_u, dv+1]``.
    """
    N = -(-max(n_u, n_c) // block) * block
    qu, qc, mc = _pad_rows(q_u, N), _pad_rows(q_c, N), _pad_rows(m_c, N)
    if reverse:
        qu, qc, mc = qu.flip(-2), qc.flip(-2), mc.flip(-2)
    allowed = torch.ones(block, block, dtype=torch.bool, device=q_u.device).tril()
    r = coef.shape[0]

    def chunk_fn(qu_: torch.Tensor, qc_: torch.Tensor, mc_: torch.Tensor, st: torch.Tensor):  # noqa: ANN202
        nb = qu_.shape[-2] // block
        Fu = fu(qu_)
        Fu = Fu.reshape(*Fu.shape[:-2], nb, block, Fu.shape[-1])
        Fc = fc(qc_) * coef
        Fc = Fc.reshape(*Fc.shape[:-2], nb, block, Fc.shape[-1])
        mb = mc_.reshape(*mc_.shape[:-2], nb, block, mc_.shape[-1])
        qub = qu_.reshape(*qu_.shape[:-2], nb, block, qu_.shape[-1])
        qcb = qc_.reshape(*qc_.shape[:-2], nb, block, qc_.shape[-1])
        w = pair(qub, qcb).masked_fill(~allowed, 0.0)  # in-block pairs, l_c <= l_u
        tot = Fc.transpose(-1, -2) @ mb  # [..., nb, r, dv1] per-block sums
        csum = tot.cumsum(-3)
        before = torch.cat([torch.zeros_like(csum[..., :1, :, :]), csum[..., :-1, :, :]], dim=-3)
        e = w @ mb + Fu @ (before + st.unsqueeze(-3))
        return e.reshape(*e.shape[:-3], nb * block, e.shape[-1]), st + csum[..., -1, :, :]

    state = torch.zeros(*m_c.shape[:-2], r, m_c.shape[-1], dtype=m_c.dtype, device=m_c.device)
    step = max(block, chunk // block * block)
    pieces = []
    for a in range(0, N, step):
        e, state = _run(chunk_fn, qu[..., a : a + step, :], qc[..., a : a + step, :], mc[..., a : a + step, :], state)
        pieces.append(e)
    out = torch.cat(pieces, dim=-2) if len(pieces) > 1 else pieces[0]
    if reverse:
        out = out.flip(-2)
    return out[..., :n_u, :] / n_c


def _tree(prob: Problem, plan: ApproxPlan, feats: Features) -> torch.Tensor:
    from ..planning.approx import _causal_block

    t = prob.t
    parent = plan.parent_map()
    children: dict[int, list[int]] = {v: [] for v in range(1, t + 1)}
    for c in plan.order:
        children[parent[c]].append(c)
    monos = set(prob.spec.polynomial.monomials)

    def is_logit(a: int, b: int) -> bool:
        return (min(a, b), max(a, b)) in monos

    def direction(u: int, c: int) -> str | None:
        if (u, c) in prob.causal:
            return "prefix"  # l_c <= l_u
        if (c, u) in prob.causal:
            return "suffix"  # l_u <= l_c
        return None

    mono_index = {m: i for i, m in enumerate(prob.spec.polynomial.monomials)}

    def edge_coef(a: int, b: int) -> torch.Tensor:
        return feats.coef(plan.exp_coeffs[mono_index[(min(a, b), max(a, b))]])

    def edge_pair(a: int, b: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        coeffs = plan.exp_coeffs[mono_index[(min(a, b), max(a, b))]]

        def pair(qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
            x = (qa @ qb.transpose(-1, -2)) * prob.scale
            acc = torch.full_like(x, coeffs[-1])
            for c_ in reversed(coeffs[:-1]):  # Horner: P(x) = sum_i a_i x^i
                acc = acc * x + c_
            return acc

        return pair

    has_feat = {v: any(is_logit(v, w) for w in range(1, t + 1) if w != v) for v in range(1, t + 1)}
    ones_coef = torch.ones(1, dtype=prob.dtype, device=prob.device)
    chunk = max(1, plan.chunk_rows)
    block = _causal_block(prob.spec, plan.rank, plan.memory_budget)

    A: dict[int, torch.Tensor] = {}  # child -> coef * F^T m / n   [..., r, dv1]
    M: dict[int, torch.Tensor] = {}  # child of a causal edge -> full m_c  [..., n_c, dv1]
    E: dict[int, torch.Tensor] = {}  # child of a causal edge -> message to its parent  [..., n_u, dv1]
    out_chunks: list[torch.Tensor] = []
    for c in (*plan.order, 1):
        u = parent.get(c)
        # causal children first: their messages need the whole child sequence
        for g in children[c]:
            dirn = direction(c, g)
            if dirn is not None:
                lg = is_logit(c, g)
                E[g] = _prefix_message(
                    feats if lg else _ones_features, feats if lg else _ones_features,
                    edge_coef(c, g) if lg else ones_coef, prob.q[c], prob.q[g], M.pop(g),  # type: ignore[arg-type]
                    prob.n(c), prob.n(g), block, reverse=(dirn == "suffix"), chunk=chunk,
                    pair=edge_pair(c, g) if lg else _ones_pair,
                )
        fc = feats if has_feat[c] else _ones_features
        vext = _value_ext(prob, c) if c != 1 else None
        up_kind = None if u is None else ("causal" if direction(u, c) else "plain")
        plain_children = [g for g in children[c] if g in A]
        causal_children = [g for g in children[c] if g in E]
        # Features used on the edge to the parent: the monomial features, or ones for a zero edge.
        up_logit = u is not None and is_logit(u, c)
        acc: torch.Tensor | None = None
        m_chunks = []
        n_c = prob.n(c)
        for r0 in range(0, n_c, chunk):
            r1 = min(n_c, r0 + chunk)

            n_plain = len(plain_children)

            def chunk_fn(q, *rest, _np=n_plain, _up_logit=up_logit, _kind=up_kind, _fc=fc):  # noqa: ANN001, ANN202
                a_list, rest = rest[:_np], rest[_np:]
                F = _fc(q)
                e = None
                for a_g in a_list:
                    msg = F @ a_g if a_g.shape[-2] == F.shape[-1] else a_g  # zero edge: [.., 1, dv1]
                    e = msg if e is None else e * msg
                for x in rest:
                    e = x if e is None else e * x
                if e is None:
                    e = torch.ones(*q.shape[:-1], prob.dv + 1, dtype=q.dtype, device=q.device)
                elif e.shape[-2] != q.shape[-2]:  # only zero-edge messages: same for every row
                    e = e.expand(*e.shape[:-2], q.shape[-2], e.shape[-1])
                contrib = None
                if _kind == "plain":
                    Fu = F if _up_logit else _ones_features(q)
                    contrib = Fu.transpose(-1, -2) @ e
                return e, contrib

            q_ch = prob.q[c][..., r0:r1, :]  # type: ignore[index]
            extra = [E[g][..., r0:r1, :] for g in causal_children]
            if vext is not None:
                extra.append(vext[..., r0:r1, :])
            e, contrib = _run(chunk_fn, q_ch, *[A[g] for g in plain_children], *extra)
            if c == 1 or up_kind == "causal":
                m_chunks.append(e)
            if contrib is not None:
                acc = contrib if acc is None else acc + contrib
        for g in plain_children:
            del A[g]
        for g in causal_children:
            del E[g]
        m_full = torch.cat(m_chunks, dim=-2) if m_chunks else None
        if c == 1:
            out_chunks.append(m_full)  # type: ignore[arg-type]
        elif up_kind == "causal":
            M[c] = m_full  # type: ignore[assignment]
        else:
            coef = edge_coef(u, c) if up_logit else ones_coef  # type: ignore[arg-type]
            A[c] = acc * coef.unsqueeze(-1) / n_c  # type: ignore[operator]
    return _finish(out_chunks[0], prob)


# ----------------------------------------------------------------------------- contraction strategy
def _flattener(prob: Problem) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    bshape = tuple(prob.batch_shape)
    bt = 1
    for s in bshape:
        bt *= s

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.expand(*bshape, *x.shape[-2:]).reshape(bt, *x.shape[-2:])

    return flat, bt


def _contract_direct(prob: Problem, plan: ApproxPlan, feats: Features) -> torch.Tensor:
    """All features at once, one opt_einsum contraction (the planner's choice for short sequences)."""
    flat, bt = _flattener(prob)
    monos = prob.spec.polynomial.monomials
    cache: dict[int, torch.Tensor] = {}
    ops = []
    for kind, x in plan.operands:
        if kind == "F":
            if x not in cache:
                cache[x] = feats(flat(prob.q[x]))  # type: ignore[arg-type]
            ops.append(cache[x])
        elif kind == "coef":
            ops.append(feats.coef(plan.exp_coeffs[monos.index(x)]))
        elif kind == "V":
            ops.append(flat(_value_ext(prob, x)) / prob.n(x))
        else:
            ops.append(torch.ones(bt, prob.n(1), dtype=prob.dtype, device=prob.device))
    out = opt_einsum.contract(plan.einsum, *ops, optimize=[tuple(p) for p in plan.path], backend="torch")
    return _finish(out.reshape(*prob.batch_shape, prob.n(1), prob.dv + 1), prob)


def _contract(prob: Problem, plan: ApproxPlan, feats: Features) -> torch.Tensor:
    """Per-variable summaries (row chunks), then x1 in row chunks along the planned opt_einsum path."""
    if not plan.summaries:
        return _contract_direct(prob, plan, feats)
    flat, bt = _flattener(prob)
    bshape = tuple(prob.batch_shape)

    monos = prob.spec.polynomial.monomials
    coefs = {m: feats.coef(a) for m, a in zip(monos, plan.exp_coeffs)}
    chunk = max(1, plan.chunk_rows)
    summary: dict[int, torch.Tensor] = {}
    for v, expr in plan.summaries:
        deg = sum(1 for m in monos if v in m)
        q, val = flat(prob.q[v]), flat(_value_ext(prob, v))  # type: ignore[arg-type]
        n_v = prob.n(v)

        def part(qc: torch.Tensor, vc: torch.Tensor, _deg: int = deg, _expr: str = expr) -> torch.Tensor:
            F = feats(qc) if _deg else None
            return opt_einsum.contract(_expr, *([F] * _deg), vc, backend="torch")

        acc = None
        for r0 in range(0, n_v, chunk):
            piece = _run(part, q[:, r0 : r0 + chunk], val[:, r0 : r0 + chunk])
            acc = piece if acc is None else acc + piece
        summary[v] = acc / n_v  # type: ignore[operator]
    q1 = flat(prob.q[1])  # type: ignore[arg-type]
    outs = []
    for r0 in range(0, prob.n(1), chunk):

        def final(qc: torch.Tensor, *ts: torch.Tensor) -> torch.Tensor:
            F = feats(qc)
            it = iter(ts)
            ops = []
            for kind, x in plan.operands:
                if kind == "F1":
                    ops.append(F)
                elif kind == "coef":
                    ops.append(coefs[x])
                elif kind == "T":
                    ops.append(next(it))
                else:
                    ops.append(torch.ones(qc.shape[:-1], dtype=qc.dtype, device=qc.device))
            rows = qc.shape[-2]
            path = [tuple(p) for p in plan.path] if rows == chunk else "auto"
            return opt_einsum.contract(plan.einsum, *ops, optimize=path, backend="torch")

        ts = [summary[x] for kind, x in plan.operands if kind == "T"]
        outs.append(_run(final, q1[:, r0 : r0 + chunk], *ts))
    out = torch.cat(outs, dim=-2) if len(outs) > 1 else outs[0]
    out = out.reshape(*bshape, prob.n(1), prob.dv + 1)
    return _finish(out, prob)


def approx_attention(prob: Problem, plan: Plan) -> torch.Tensor:
    """Kernel for ``method="approx"`` (see module docstring)."""
    if not isinstance(plan, ApproxPlan) or plan.degree is None:
        plan = approx_hook(prob, plan, {})
    feats = Features(prob.spec.head_dim, plan.degree, prob.scale, prob.device, prob.dtype)  # type: ignore[arg-type]
    if plan.strategy == "tree":
        return _tree(prob, plan, feats)
    return _contract(prob, plan, feats)

