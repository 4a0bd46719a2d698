"""Hypothesis strategies shared by the exact-method property tests."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from polyattn import AttentionPolynomial


@st.composite
def poly_problems(draw, max_vars: int = 5, max_degree: int = 3, max_len: int = 5):
    """A random polynomial with random inputs: unequal lengths, masks, causal modes, value-less vars."""
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
    masks = {}
    for _ in range(draw(st.integers(0, 2))):
        a, b = draw(st.lists(st.integers(1, t), min_size=2, max_size=2, unique=True))
        density = draw(st.sampled_from([0.3, 0.7, 1.0]))
        masks[(a, b)] = torch.rand(lens[a - 1], lens[b - 1], generator=g) < density
    scale = draw(st.sampled_from([None, 0.5, 2.0]))
    return p, queries, values, dict(causal=causal, mask=masks or None, scale=scale)
