"""Benchmarks (``polyattn bench``): same-run ratios against baselines, JSON results and log-log plots.

Suites: :mod:`polyattn.bench.kernels` (exact kernels vs SDPA, reference, naive einsum, peers);
others register through :mod:`polyattn.bench.cli`. Measurement primitives live in
:mod:`polyattn.bench.measure`; peer-package adapters in :mod:`polyattn.bench.peers`.
"""

from .measure import fit_exponent, peak_memory_growth, time_interleaved, write_json_atomic

__all__ = ["fit_exponent", "peak_memory_growth", "time_interleaved", "write_json_atomic"]
