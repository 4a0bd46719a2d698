"""Issue-2 acceptance check: the path x1*x2 + x2*x3 at n=2048, d=64, batch*heads=4.

Measures (in one process, same run) the median forward time of poly-attention and of two SDPA
calls, and (in fresh subprocesses) the peak resident-memory growth of one forward call.

    .venv/bin/python benchmarks/foundation_path.py [--n 2048] [--d 64] [--bh 4] [--out docs/figures/foundation_path.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F


def _inputs(n: int, d: int, bh: int):
    g = torch.Generator().manual_seed(0)
    q = [torch.randn(1, bh, n, d, generator=g) for _ in range(3)]  # [batch, heads, seq, dim]
    v = [torch.randn(1, bh, n, d, generator=g) for _ in range(2)]
    return q, v


def _peak_child(which: str, n: int, d: int, bh: int) -> None:
    import polyattn

    q, v = _inputs(n, d, bh)
    if which == "poly":
        polyattn.poly_attention("x1*x2", q[:2], v[:1])  # load kernels before the baseline
    base = _reset_peak()
    with torch.no_grad():
        if which == "poly":
            polyattn.poly_attention("x1*x2 + x2*x3", q, v)
        else:
            F.scaled_dot_product_attention(q[0], q[1], v[0])
    peak = _vm_hwm_kb()
    print(json.dumps({"peak_growth_mb": (peak - base) / 1024}))


def _vm_hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> int:
    """Reset the peak-RSS counter (Linux: write 5 to clear_refs) and return the current RSS in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _vm_hwm_kb()


def _peak(which: str, n: int, d: int, bh: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", which, "--n", str(n), "--d", str(d), "--bh", str(bh)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mb"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--bh", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--child", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.child:
        _peak_child(a.child, a.n, a.d, a.bh)
        return
    import polyattn

    q, v = _inputs(a.n, a.d, a.bh)

    def poly():
        with torch.no_grad():
            polyattn.poly_attention("x1*x2 + x2*x3", q, v)

    def two_sdpa():
        with torch.no_grad():
            F.scaled_dot_product_attention(q[1], q[2], v[1])
            F.scaled_dot_product_attention(q[0], q[1], v[0])

    poly(), two_sdpa()
    tp, ts = [], []
    for _ in range(a.repeats):  # interleaved so that machine noise hits both alike
        for fn, acc in ((poly, tp), (two_sdpa, ts)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    res = {
        "polynomial": "x1*x2 + x2*x3", "n": a.n, "d": a.d, "batch_heads": a.bh,
        "poly_ms": statistics.median(tp) * 1e3, "two_sdpa_ms": statistics.median(ts) * 1e3,
        "ratio_vs_two_sdpa": statistics.median(tp) / statistics.median(ts),
        "poly_peak_growth_mb": _peak("poly", a.n, a.d, a.bh),
        "sdpa_peak_growth_mb": _peak("sdpa", a.n, a.d, a.bh),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(json.dumps(res, indent=2))
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(a.out) or ".", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
