"""Summaries of a ``kernels`` run: same-run ratios, fitted exponents, text and markdown tables.

Ratios are taken within one case (same tensors, same run): polyattn vs SDPA (and ``e x SDPA`` for a
tree with ``e`` edges), vs each baseline (``x faster``, ``x less memory``), GFLOP/s as a fraction
of a FLOP-matched ``torch.matmul`` (forward rows), and for the fused cubic kernels the measured
peak against the plan's stated figure. Exponents: least-squares slope of log(time) vs log(n).
"""

from __future__ import annotations

from typing import Any

from polyattn.timing import fit_exponent

__all__ = ["summarize", "format_summary", "format_markdown", "scaling_rows"]


def summarize(records: list[dict]) -> dict:
    """Same-run ratios per case and fitted time exponents per (mechanism, impl, mode, d)."""
    ok = [r for r in records if r.get("status") == "ok"]
    key = lambda r: (r["sweep"], r["mechanism"], r["n"], r["d"], r["batch_heads"], r["mode"])  # noqa: E731
    groups: dict[tuple, dict[str, dict]] = {}
    for r in ok:
        groups.setdefault(key(r), {})[r["impl"]] = r
    ratios = []
    for k, g in groups.items():
        pa = g.get("polyattn")
        if pa is None:
            continue
        row: dict[str, Any] = dict(zip(("sweep", "mechanism", "n", "d", "batch_heads", "mode"), k))
        row["polyattn_s"] = pa["time_s"]
        row["method"] = pa.get("method")
        if "sdpa" in g:
            row["vs_sdpa"] = pa["time_s"] / g["sdpa"]["time_s"]
            if pa["is_tree"]:
                row["vs_edges_x_sdpa"] = pa["time_s"] / (pa["edges"] * g["sdpa"]["time_s"])
        if "matmul" in g and pa.get("gflops"):
            row["gflops"] = pa["gflops"]
            row["matmul_gflops"] = g["matmul"]["gflops"]
            row["gflops_fraction_of_matmul"] = pa["gflops"] / g["matmul"]["gflops"]
        if pa.get("peak_mb") is not None:
            row["peak_mb"] = pa["peak_mb"]
            if pa.get("plan_peak_mb") is not None:
                row["plan_peak_mb"] = pa["plan_peak_mb"]
                row["peak_within_plan"] = pa["peak_mb"] <= pa["plan_peak_mb"]
        for name, r in g.items():
            if name in ("polyattn", "sdpa", "matmul"):
                continue
            row[f"speedup_vs_{name}"] = r["time_s"] / pa["time_s"]
            if r.get("peak_mb") and pa.get("peak_mb"):
                row[f"memory_ratio_vs_{name}"] = r["peak_mb"] / max(pa["peak_mb"], 1e-3)
            row[f"{name}_finite"] = r.get("finite")
            if r.get("peak_mb") is not None:
                row[f"{name}_peak_mb"] = r["peak_mb"]
        ratios.append(row)
    fits: dict[tuple, list[tuple[int, float]]] = {}
    for r in ok:
        fits.setdefault((r["sweep"], r["mechanism"], r["impl"], r["mode"], r["d"], r["batch_heads"]), []).append(
            (r["n"], r["time_s"])
        )
    exponents = []
    for (sw, mech, impl, mode, d, bh), pts in sorted(fits.items()):
        e = fit_exponent([n for n, _ in pts], [t for _, t in pts])
        if e is not None:
            exponents.append(dict(sweep=sw, mechanism=mech, impl=impl, mode=mode, d=d, batch_heads=bh,
                                  n_min=min(n for n, _ in pts), n_max=max(n for n, _ in pts), exponent=e))
    return {"ratios": ratios, "exponents": exponents}


def format_summary(doc: dict) -> str:
    lines = []
    for r in doc["summary"]["ratios"]:
        extra = " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r.items()
            if k not in ("sweep", "mechanism", "n", "d", "batch_heads", "mode", "polyattn_s")
        )
        lines.append(f"{r['mechanism']:>10} n={r['n']:<6} d={r['d']:<3} bh={r['batch_heads']} {r['mode']:<6} "
                     f"polyattn={r['polyattn_s'] * 1e3:9.2f} ms  {extra}")
    for e in doc["summary"]["exponents"]:
        lines.append(f"exponent {e['mechanism']:>10} {e['impl']:<20} {e['mode']:<6} n={e['n_min']}..{e['n_max']}: "
                     f"{e['exponent']:.2f}")
    return "\n".join(lines)


def format_markdown(doc: dict) -> str:
    """Markdown tables (for docs/benchmarks.md): same-run ratios, cubic scaling (GFLOP/s vs n beside
    the time exponent), fitted exponents, and what was not run."""
    out = [
        "| sweep | mechanism | n | d | b*h | mode | method | polyattn [ms] | peak [MB] | plan peak [MB] | / SDPA "
        "| / (e x SDPA) | baseline | x faster | x less memory | baseline peak [MB] | baseline finite "
        "| GFLOP/s (of matmul) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v: Any, spec: str = ".3g") -> str:
        return "" if v is None else format(v, spec)

    for r in doc["summary"]["ratios"]:
        peers = sorted({k[len("speedup_vs_"):] for k in r if k.startswith("speedup_vs_")})
        gf = ""
        if r.get("gflops") is not None:
            gf = f"{r['gflops']:.1f} ({100 * r['gflops_fraction_of_matmul']:.0f}% of {r['matmul_gflops']:.1f})"
        lead = (f"| {r['sweep']} | {r['mechanism']} | {r['n']} | {r['d']} | {r['batch_heads']} | {r['mode']} | {r.get('method', '')} "
                f"| {1e3 * r['polyattn_s']:.1f} | {f(r.get('peak_mb'), '.1f')} | {f(r.get('plan_peak_mb'), '.1f')} "
                f"| {f(r.get('vs_sdpa'))} | {f(r.get('vs_edges_x_sdpa'))} ")
        if not peers:
            out.append(lead + f"|  |  |  |  |  | {gf} |")
        for name in peers:
            out.append(lead + f"| {name} | {f(r.get('speedup_vs_' + name))} | {f(r.get('memory_ratio_vs_' + name))} "
                       f"| {f(r.get(name + '_peak_mb'), '.1f')} | {r.get(name + '_finite', '')} | {gf} |")
    scaling = scaling_rows(doc)
    if scaling:
        out += ["", "| mechanism | mode | d | b*h | n | polyattn [ms] | GFLOP/s | matmul GFLOP/s | fraction of matmul |",
                "|---|---|---|---|---|---|---|---|---|"]
        for s in scaling:
            out.append(f"| {s['mechanism']} | {s['mode']} | {s['d']} | {s['batch_heads']} | {s['n']} "
                       f"| {1e3 * s['time_s']:.1f} | {f(s.get('gflops'), '.1f')} | {f(s.get('matmul_gflops'), '.1f')} "
                       f"| {f(s.get('fraction'), '.2f')} |")
    out += ["", "| mechanism | impl | mode | d | b*h | n range | fitted time exponent |", "|---|---|---|---|---|---|---|"]
    for e in doc["summary"]["exponents"]:
        out.append(f"| {e['mechanism']} | {e['impl']} | {e['mode']} | {e['d']} | {e['batch_heads']} | "
                   f"{e['n_min']}..{e['n_max']} | {e['exponent']:.2f} |")
    skipped = [r for r in doc["records"] if str(r.get("status", "")).startswith(("skipped", "error"))]
    if skipped:
        out += ["", "Not run:", ""]
        for r in skipped:
            out.append(f"- {r['mechanism']} n={r['n']} {r['mode']} {r['impl']}: {r['status']}")
    return "\n".join(out)


def scaling_rows(doc: dict) -> list[dict]:
    """polyattn's forward GFLOP/s per n (and the FLOP-matched matmul's, where it ran), for every
    (sweep, mechanism, d, b*h) measured at two or more n: flat when the kernel is BLAS-bound."""
    ok = [r for r in doc["records"] if r.get("status") == "ok" and r.get("mode") == "fwd"]
    key = lambda r: (r["sweep"], r["mechanism"], r["d"], r["batch_heads"])  # noqa: E731
    mm = {(key(r), r["n"]): r.get("gflops") for r in ok if r["impl"] == "matmul"}
    series: dict[tuple, list[dict]] = {}
    for r in ok:
        if r["impl"] == "polyattn" and r.get("gflops") is not None:
            series.setdefault(key(r), []).append(r)
    rows = []
    for k, rs in sorted(series.items()):
        if len({r["n"] for r in rs}) < 2:
            continue
        for r in sorted(rs, key=lambda r: r["n"]):
            m = mm.get((k, r["n"]))
            rows.append(dict(sweep=k[0], mechanism=k[1], d=k[2], batch_heads=k[3], mode="fwd", n=r["n"],
                             time_s=r["time_s"], gflops=r["gflops"], matmul_gflops=m,
                             fraction=(r["gflops"] / m) if m else None))
    return rows
