"""Generate the tables of ``docs/theory.md``: classification and construction accuracy.

``python -m polyattn.theory.report table``   -> markdown classification table
``python -m polyattn.theory.report verify``  -> accuracy of the explicit constructions
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from ..tasks import FunctionComposition, Match3, rng_for
from . import constructions as C
from .analyze import analyze

__all__ = ["TABLE_POLYNOMIALS", "classification_markdown", "verify_composition", "verify_match3", "main"]

TABLE_POLYNOMIALS: tuple[tuple[str, str], ...] = (
    ("self-attention", "x1*x2"),
    ("path h_2", "x1*x2 + x2*x3"),
    ("path h_3", "x1*x2 + x2*x3 + x3*x4"),
    ("path h_4", "x1*x2 + x2*x3 + x3*x4 + x4*x5"),
    ("star t=4", "x1*x2 + x1*x3 + x1*x4"),
    ("x1 leaf of a star", "x1*x2 + x2*x3 + x2*x4"),
    ("branching tree", "x1*x2 + x2*x3 + x2*x4 + x4*x5"),
    ("binary tree depth 2", "x1*x2 + x1*x3 + x2*x4 + x2*x5 + x3*x6 + x3*x7"),
    ("forest", "x1*x2 + x2*x3 + x3*x4 + x5*x6"),
    ("x1 isolated", "x2*x3"),
    ("x2 isolated", "x1*x3"),
    ("Strassen (triangle)", "x1*x2 + x2*x3 + x1*x3"),
    ("triangle away from x1", "x1*x2 + x2*x3 + x3*x4 + x2*x4"),
    ("4-cycle", "x1*x2 + x2*x3 + x3*x4 + x1*x4"),
    ("5-cycle", "x1*x2 + x2*x3 + x3*x4 + x4*x5 + x1*x5"),
    ("K4", "x1*x2 + x1*x3 + x1*x4 + x2*x3 + x2*x4 + x3*x4"),
    ("3-tensor", "x1*x2*x3"),
    ("4-tensor", "x1*x2*x3*x4"),
    ("mixed degree", "x1*x2*x3 + x3*x4"),
    ("mixed degree", "x1*x2 + x2*x3*x4"),
    ("sub-monomial", "x1*x2 + x1*x2*x3"),
)


def _fmt(v: object) -> str:
    if v is None:
        return "unknown"
    if v is True:
        return "yes"
    if v is False:
        return "no"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def classification_markdown(rows: Sequence[tuple[str, str]] = TABLE_POLYNOMIALS) -> str:
    head = ("| mechanism | h | t | k | tree | quadratic | upper (planner) | lower bound (hypothesis) "
            "| approx. B = o((log n)^x), x | r-fold composition | Match3 |")
    lines = [head, "|" + "---|" * 11]
    for name, spec in rows:
        r = analyze(spec)
        d = r.to_dict()
        lo = d["claims"]["exact_lower"]
        lower = _fmt(lo["value"]) + (f" ({lo['hypothesis']})" if lo["value"] is not None else "")
        comp = _fmt(d["composition_depth"]) + (" †" if r.composition.basis == "restriction" else "")
        m3 = _fmt(d["match3"]) + (" †" if r.match3.basis == "restriction" else "")
        lines.append(
            f"| {name} | `{d['polynomial']}` | {d['num_variables']} | {d['degree']} | "
            f"{_fmt(d['is_tree'])} | {_fmt(d['quadratic'])} | n^{d['exact_upper_exponent']} | {lower} | "
            f"{_fmt(d['approx_bound_exponent'])} | {comp} | {m3} |"
        )
    lines.append("")
    lines.append("† via a restriction (zeroing the queries of some variables), see below.")
    return "\n".join(lines)


def verify_composition(
    rs: Sequence[int] = (1, 2, 3, 4), ms: Sequence[int] = (8, 25, 64), *, instances: int = 1000,
    seed: int = 0, polynomial: str | None = None,
) -> list[dict]:
    """Accuracy of :func:`composition_model` on training batches of
    :class:`polyattn.tasks.FunctionComposition` ``(r, m)`` (``train_batch(seed, 0, instances)``)."""
    out = []
    for r in rs:
        for m in ms:
            t0 = time.perf_counter()
            model = C.composition_model(r, m, polynomial=polynomial)
            batch = FunctionComposition(r, m).train_batch(seed, 0, instances)
            y = batch.labels
            y_hat = model.attend(batch.tokens)[:, 0, 0]
            pred = model.predict(batch.tokens)[:, 0]
            out.append({
                "polynomial": str(model.polynomial), "r": r, "m": m, "seq_len": r * m + 1,
                "instances": instances, "accuracy": float((pred == y).double().mean()),
                "max_abs_dev": float((y_hat - y).abs().max()), "seconds": time.perf_counter() - t0,
            })
    return out


def verify_match3(
    configs: Sequence[tuple[int, int, int]] = ((31, 6, 3), (97, 12, 3), (257, 32, 3), (31, 6, 4)),
    *, instances: int = 1000, seed: int = 0,
) -> list[dict]:
    """Accuracy of :func:`match3_model` for each (modulus, n, t) on fresh i.i.d. sequences of
    :class:`polyattn.tasks.Match3` ``(n, modulus, bos=True)`` (its ``sample``)."""
    out = []
    for M, n, t in configs:
        t0 = time.perf_counter()
        model = C.match3_model(M, t=t, seq_len=n)
        task = Match3(n=n, modulus=M, bos=True)
        tok, lab = task.sample(rng_for(seed, M, n, t), instances)
        tokens, labels = torch.from_numpy(tok), torch.from_numpy(lab)[:, 1:]
        y_hat = model.attend(tokens)[:, 1:, 0]
        pred = model.predict(tokens)[:, 1:]
        out.append({
            "polynomial": str(model.polynomial), "modulus": M, "seq_len": n, "instances": instances,
            "labels": instances * n, "positive_rate": float(labels.double().mean()),
            "accuracy": float((pred == labels).double().mean()),
            "max_abs_dev": float((y_hat - labels).abs().max()), "seconds": time.perf_counter() - t0,
        })
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m polyattn.theory.report")
    ap.add_argument("what", choices=["table", "verify"])
    ap.add_argument("--instances", type=int, default=1000)
    args = ap.parse_args(argv)
    if args.what == "table":
        print(classification_markdown())
        return 0
    print("| construction | r | m | seq len | instances | accuracy | max abs deviation of output |")
    print("|---|---|---|---|---|---|---|")
    for poly in (None, "x1*x2 + x2*x3 + x1*x3"):
        rows = verify_composition(instances=args.instances, polynomial=poly) if poly is None else \
            verify_composition(rs=(2,), instances=args.instances, polynomial=poly)
        for row in rows:
            print(f"| `{row['polynomial']}` | {row['r']} | {row['m']} | {row['seq_len']} | "
                  f"{row['instances']} | {row['accuracy']:.4f} | {row['max_abs_dev']:.1e} |")
    print()
    print("| construction | modulus M | length n | instances (labels) | positive rate | accuracy "
          "| max abs deviation |")
    print("|---|---|---|---|---|---|---|")
    for row in verify_match3(instances=args.instances):
        print(f"| `{row['polynomial']}` | {row['modulus']} | {row['seq_len']} | {row['instances']} "
              f"({row['labels']}) | {row['positive_rate']:.3f} | {row['accuracy']:.4f} | "
              f"{row['max_abs_dev']:.1e} |")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
