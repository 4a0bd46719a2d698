r"""``polyattn bench decode``: generation speed with and without the :class:`~polyattn.DecodeCache`.

For each prompt length ``n`` and each polynomial (default: the path ``x1*x2 + x2*x3`` and
self-attention ``x1*x2``) a 1-block causal-tree :class:`~polyattn.PolyTransformer` (float32,
batch 1) is prefilled with ``n`` tokens once; then

* **cached**: ``--new-tokens`` tokens are decoded one at a time through the cache (each
  ``O(n * d)`` per edge plus the projections and MLP), timed as one block;
* **uncached**: one new token by a full causal forward over the ``n + 1`` tokens (what decoding
  without a cache costs per token, ``O(n^2 d)`` per edge), timed ``--uncached-repeats`` times;
* **hand-written SDPA + KV cache** (when the last polynomial is ``x1*x2``): the same ``x1*x2``
  model's weights run by a minimal decoder (plain SDPA, preallocated K/V buffers,
  :class:`SdpaKVCache`), checked to give the same logits; it shows polyattn's per-token overhead.

Tokens/s = tokens / seconds. Mechanisms are timed round-robin inside each ``n`` (so load from
other processes hits them alike) and the median over ``--rounds`` rounds is reported; the ratios
cached / uncached and path / self-attention come from the same run. The prefill time is recorded
as context. Results: JSON (``decode.json``) and a plot (``decode.png``) in ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, cast

import torch

from ..atomicio import atomic_save_figure
from ..nn import DecodeCache, PolyBlock, PolyTransformer
from ..nn.generate import forward_tokens
from ..timing import median
from .measure import environment, write_json_atomic

__all__ = ["run_decode_bench", "plot_decode", "add_suite", "DEFAULTS"]

DEFAULTS: dict[str, Any] = {
    "ns": [1024, 4096, 16384],
    "polynomials": ["x1*x2 + x2*x3", "x1*x2"],
    "new_tokens": 32,
    "uncached_repeats": 2,
    "rounds": 3,
    "dim": 64,
    "heads": 2,
    "depth": 1,
    "vocab": 256,
}


class SdpaKVCache:
    """Hand-written baseline: the ``x1*x2`` :class:`PolyTransformer`'s own weights run with plain
    ``scaled_dot_product_attention`` and a preallocated K/V buffer per block (what a minimal
    decoder does). It measures the per-token overhead of polyattn's generic cached path."""

    def __init__(self, model: PolyTransformer, capacity: int) -> None:
        self.m, self.cap, self.n = model, capacity, 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def _split(self, y: torch.Tensor, heads: int) -> torch.Tensor:
        b, k, w = y.shape
        return y.view(b, k, heads, w // heads).transpose(1, 2)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.m
        b, k = tokens.shape
        h = m.embeds[0](tokens)
        for i, blk in enumerate(cast("list[PolyBlock]", m.blocks)):
            att = blk.attn
            a = blk.norm1(h)
            q = self._split(att.to_q[0](a), att.heads)
            kk = self._split(att.to_q[1](a), att.heads)
            vv = self._split(att.to_v[0](a), att.heads)
            if len(self.k) <= i:
                self.k.append(kk.new_empty(b, att.heads, self.cap, kk.shape[-1]))
                self.v.append(vv.new_empty(b, att.heads, self.cap, vv.shape[-1]))
            self.k[i][:, :, self.n:self.n + k] = kk
            self.v[i][:, :, self.n:self.n + k] = vv
            keys, vals = self.k[i][:, :, :self.n + k], self.v[i][:, :, :self.n + k]
            o = torch.nn.functional.scaled_dot_product_attention(q, keys, vals, is_causal=self.n == 0 and k > 1,
                                                                 scale=att.scale)
            h = h + att.to_out(o.transpose(1, 2).reshape(b, k, -1))
            if blk.mlp is not None:
                h = h + blk.mlp(blk.norm2(h))
        self.n += k
        return m.head(m.norm(h))


def _model(poly: str, cfg: dict[str, Any], seed: int) -> PolyTransformer:
    torch.manual_seed(seed)
    return PolyTransformer(cfg["vocab"], cfg["vocab"], dim=cfg["dim"], depth=cfg["depth"], heads=cfg["heads"],
                           polynomial=poly, causal="tree", readout="all").eval()


@torch.no_grad()
def run_decode_bench(cfg: dict[str, Any], log=print) -> dict[str, Any]:
    """Measure every (n, polynomial); returns the JSON document (see the module docstring)."""
    records = []
    g = torch.Generator().manual_seed(0)
    for n in cfg["ns"]:
        prompt = torch.randint(0, cfg["vocab"], (1, n), generator=g)
        models = {p: _model(p, cfg, seed=i) for i, p in enumerate(cfg["polynomials"])}
        caches: dict[str, list[DecodeCache]] = {}
        prefill: dict[str, float] = {}
        nxt: dict[str, torch.Tensor] = {}
        for p, m in models.items():
            warm = [DecodeCache() for _ in m.blocks]  # first calls pay one-time costs: not timed
            forward_tokens(m, prompt[:, :64], caches=warm)
            forward_tokens(m, prompt[:, :1], caches=warm)
            caches[p] = [DecodeCache() for _ in m.blocks]
            t0 = time.perf_counter()
            logits = forward_tokens(m, prompt, caches=caches[p])
            prefill[p] = time.perf_counter() - t0
            nxt[p] = logits[:, -1:].argmax(-1)
            log(f"n={n} {p}: prefill {prefill[p]:.3f} s")
        base = cfg["polynomials"][-1]
        kv = None
        if base == "x1*x2":
            kv = SdpaKVCache(models[base], n + cfg["new_tokens"] * cfg["rounds"] + 1)
            kv_next = kv(prompt)[:, -1:].argmax(-1)
        cached: dict[str, list[float]] = {p: [] for p in models}
        kv_rates: list[float] = []
        kv_diff = 0.0
        for _ in range(cfg["rounds"]):
            for p, m in models.items():
                tok = nxt[p]
                t0 = time.perf_counter()
                for _ in range(cfg["new_tokens"]):
                    tok = forward_tokens(m, tok, caches=caches[p])[:, -1:].argmax(-1)
                cached[p].append(cfg["new_tokens"] / (time.perf_counter() - t0))
                nxt[p] = tok
            if kv is not None:
                tok = kv_next
                t0 = time.perf_counter()
                for _ in range(cfg["new_tokens"]):
                    tok = kv(tok)[:, -1:].argmax(-1)
                kv_rates.append(cfg["new_tokens"] / (time.perf_counter() - t0))
                kv_next = tok
        if kv is not None:  # same weights, same tokens: the two caches must agree
            probe = nxt[base]
            a = forward_tokens(models[base], probe, caches=caches[base])
            kv_diff = float((a - kv(probe)).abs().max())
        uncached: dict[str, list[float]] = {p: [] for p in models}
        seq = torch.cat([prompt, nxt[cfg["polynomials"][0]]], dim=1)
        for _ in range(cfg["uncached_repeats"]):
            for p, m in models.items():
                t0 = time.perf_counter()
                m(seq)[:, -1].argmax(-1)  # the full causal forward over n + 1 tokens
                uncached[p].append(1.0 / (time.perf_counter() - t0))
        for p in models:
            rec = {
                "n": n, "polynomial": p, "prefill_s": prefill[p],
                "cached_tokens_per_s": median(cached[p]), "cached_samples": cached[p],
                "uncached_tokens_per_s": median(uncached[p]), "uncached_samples": uncached[p],
                "cache_bytes": sum(c.nbytes for c in caches[p]),
                "cache_length": len(caches[p][0]),
            }
            rec["speedup"] = rec["cached_tokens_per_s"] / rec["uncached_tokens_per_s"]
            if kv is not None and p == base:
                rec["sdpa_kv_tokens_per_s"] = median(kv_rates)
                rec["sdpa_kv_samples"] = kv_rates
                rec["sdpa_kv_max_abs_logit_diff"] = kv_diff
            records.append(rec)
            log(f"n={n} {p}: cached {rec['cached_tokens_per_s']:.1f} tok/s, uncached "
                f"{rec['uncached_tokens_per_s']:.3f} tok/s, speed-up {rec['speedup']:.0f}x, "
                f"cache {rec['cache_bytes'] / 2**20:.1f} MiB"
                + (f"; hand-written SDPA KV cache {rec['sdpa_kv_tokens_per_s']:.1f} tok/s "
                   f"(max |logit diff| {kv_diff:.1e})" if "sdpa_kv_tokens_per_s" in rec else ""))
    return {
        "suite": "decode", "config": cfg, "records": records,
        **environment(),
    }


def plot_decode(doc: dict[str, Any], path: str | Path) -> None:
    """Left: tokens/s vs n (log-log), cached and uncached per polynomial. Right: the ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = doc["records"]
    polys = list(dict.fromkeys(r["polynomial"] for r in recs))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {p: c for p, c in zip(polys, ["C0", "C1", "C2", "C3"])}
    for p in polys:
        rs = sorted((r for r in recs if r["polynomial"] == p), key=lambda r: r["n"])
        ns = [r["n"] for r in rs]
        ax.loglog(ns, [r["cached_tokens_per_s"] for r in rs], "-o", color=colors[p], label=f"{p}, DecodeCache")
        ax.loglog(ns, [r["uncached_tokens_per_s"] for r in rs], "--s", color=colors[p], label=f"{p}, no cache")
        bx.semilogx(ns, [r["speedup"] for r in rs], "-o", color=colors[p], label=f"{p}: cached / no cache")
        if all("sdpa_kv_tokens_per_s" in r for r in rs):
            ax.loglog(ns, [r["sdpa_kv_tokens_per_s"] for r in rs], ":D", color="C7",
                      label=f"{p}, hand-written SDPA + KV cache")
    base = polys[-1]
    for p in polys[:-1]:
        ratio = []
        for r in sorted((r for r in recs if r["polynomial"] == p), key=lambda r: r["n"]):
            b = next(x for x in recs if x["polynomial"] == base and x["n"] == r["n"])
            ratio.append((r["n"], b["cached_tokens_per_s"] / r["cached_tokens_per_s"]))
        bx.semilogx(*zip(*ratio), ":^", color=colors[p], label=f"{base} cached / {p} cached (time ratio)")
    ax.set_xlabel("prompt length n")
    ax.set_ylabel("generated tokens / s (batch 1)")
    ax.set_title("generation speed")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    bx.set_yscale("log")
    bx.set_xlabel("prompt length n")
    bx.set_ylabel("ratio")
    bx.set_title("speed-up of the cache; cost of the path vs self-attention")
    bx.grid(True, which="both", alpha=0.3)
    bx.legend(fontsize=7)
    cfg = doc["config"]
    fig.suptitle(f"1 block, dim {cfg['dim']}, {cfg['heads']} heads, float32, {doc['threads']} thread(s), "
                 f"{cfg['new_tokens']} cached tokens x {cfg['rounds']} rounds", fontsize=9)
    fig.tight_layout()
    try:
        atomic_save_figure(fig, str(path))
    finally:
        plt.close(fig)


def _main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dict(DEFAULTS)
    for key in ("ns", "polynomials", "new_tokens", "uncached_repeats", "rounds", "dim", "heads", "depth"):
        val = getattr(args, key)
        if val is not None:
            cfg[key] = val
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = run_decode_bench(cfg)
    write_json_atomic(out / "decode.json", doc)
    plot_decode(doc, out / "decode.png")
    print(f"wrote {out / 'decode.json'} and {out / 'decode.png'}")
    return 0


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ns", type=int, nargs="+", help=f"prompt lengths (default {DEFAULTS['ns']})")
    p.add_argument("--polynomials", nargs="+", help=f"polynomials (default {DEFAULTS['polynomials']}; the last is the baseline)")
    p.add_argument("--new-tokens", dest="new_tokens", type=int, help="cached tokens per round (default 32)")
    p.add_argument("--uncached-repeats", dest="uncached_repeats", type=int, help="full forwards per mechanism (default 2)")
    p.add_argument("--rounds", type=int, help="rounds of cached tokens (default 3)")
    p.add_argument("--dim", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--out", default="docs/figures/decode", help="output directory")
    p.set_defaults(handler=_main)


def add_suite(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``decode`` to the ``polyattn bench`` subcommands."""
    p = subparsers.add_parser("decode", help="generation tokens/s with and without the DecodeCache",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polyattn.bench.decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _configure(parser)
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
