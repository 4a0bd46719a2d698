"""Hypothesis strategies shared by the exact-method property tests.

``poly_problems`` draws a random polynomial with random inputs (unequal lengths, masks, causal
modes, value-less variables, broadcast batch dims) and, for every tensor, a *layout* the way real
models produce them: transposed storage, a sliced head or sequence dim, an expanded head dim or
batch dim. It returns ``(p, queries, values, kw, view)``: the base tensors are contiguous (tests
make them leaves) and ``view(queries, values)`` returns the tensors as the drawn views, built by
differentiable ops so gradients reach the leaves. ``nonfinite=True`` writes one NaN / +inf / -inf
into a random query or value entry.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from polyattn import AttentionPolynomial

LAYOUTS = ("plain", "transposed", "sliced_last", "sliced_seq", "expand_last", "expand_batch", "permuted_batch")


def as_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` (or a value derived from it, for the expanding layouts) as a strided view."""
    if layout == "transposed":  # stored as [.., k, n], used as [.., n, k]: head-dim stride n
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "sliced_last":  # every other column of a twice as wide tensor
        return torch.stack([x, torch.zeros_like(x)], dim=-1).flatten(-2)[..., ::2]
    if layout == "sliced_seq":  # every other row
        return torch.stack([x, torch.zeros_like(x)], dim=-2).flatten(-3, -2)[..., ::2, :]
    if layout == "expand_last" and x.dtype != torch.bool:  # stride 0 along the head dim
        return x[..., :1].expand(x.shape)
    if layout == "expand_batch" and x.dim() > 2:  # stride 0 along the first batch dim
        return x[:1].expand(x.shape)
    if layout == "permuted_batch" and x.dim() > 3:
        return x.transpose(0, 1).contiguous().transpose(0, 1)
    return x


@st.composite
def poly_problems(draw, max_vars: int = 5, max_degree: int = 3, max_len: int = 5, views: bool = True,
                  nonfinite: bool = False):
    t = draw(st.integers(2, max_vars))
    k = draw(st.integers(1, 4))
    monos = set()
    for _ in range(k):
        size = draw(st.integers(2, min(max_degree, t)))
        monos.add(tuple(sorted(draw(st.lists(st.integers(1, t), min_size=size, max_size=size, unique=True)))))
    p = AttentionPolynomial(sorted(monos), num_variables=t)
    causal_choices = [False, "prefix"] + (["tree"] if p.is_tree else [])
    causal = draw(st.sampled_from(causal_choices))
    equal = causal is not False and draw(st.booleans())
    if equal:
        n = draw(st.integers(1, max_len))
        lens = [n] * t
    else:
        lens = draw(st.lists(st.integers(1, max_len), min_size=t, max_size=t))
    d = draw(st.integers(1, 4))
    dv = draw(st.integers(1, 3))
    batch = draw(st.sampled_from([(), (2,), (2, 2)]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    amp = draw(st.sampled_from([0.5, 1.0, 3.0]))

    def leading():
        # Some tensors drop or shrink leading dims so that SDPA-style broadcasting is exercised.
        if not batch or draw(st.booleans()):
            return batch
        return batch[1:] if len(batch) > 1 else ()

    queries = [amp * torch.randn(*leading(), lens[j], d, generator=g, dtype=torch.float64) for j in range(t)]
    values = []
    for j in range(1, t):
        if draw(st.integers(0, 4)) == 0:
            values.append(None)
        else:
            values.append(torch.randn(*leading(), lens[j], dv, generator=g, dtype=torch.float64))
    if nonfinite:
        slots = [("q", j) for j in range(t)] + [("v", j) for j, v in enumerate(values) if v is not None]
        kind, j = draw(st.sampled_from(slots))
        x = queries[j] if kind == "q" else values[j]
        flat = x.view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    masks = {}
    for _ in range(draw(st.integers(0, 2))):
        a, b = draw(st.lists(st.integers(1, t), min_size=2, max_size=2, unique=True))
        density = draw(st.sampled_from([0.3, 0.7, 1.0]))
        m = torch.rand(lens[a - 1], lens[b - 1], generator=g) < density
        if views and draw(st.booleans()):
            # a key mask (padding-like): one row broadcast over the rows, stride 0
            m = m[:1].expand(m.shape)
        masks[(a, b)] = as_layout(m, draw(st.sampled_from(LAYOUTS))) if views else m
    scale = draw(st.sampled_from([None, 0.5, 2.0]))
    q_layouts = [draw(st.sampled_from(LAYOUTS)) if views else "plain" for _ in queries]
    v_layouts = [draw(st.sampled_from(LAYOUTS)) if views else "plain" for _ in values]

    def view(qs, vs):
        return ([as_layout(x, lay) for x, lay in zip(qs, q_layouts)],
                [None if x is None else as_layout(x, lay) for x, lay in zip(vs, v_layouts)])

    return p, queries, values, dict(causal=causal, mask=masks or None, scale=scale), view
