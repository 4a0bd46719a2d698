"""Configuration of the ``kernels`` suite: named mechanisms, sweeps, the TOML loader.

A run is a list of :class:`Sweep` s (from a TOML config and/or the command line). Each sweep crosses
mechanisms (named, or any polynomial) x n x d x mode (``fwd`` under ``no_grad``, ``fwdbwd`` =
forward + ``sum().backward()``) for the implementations it lists (:mod:`.baselines`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef,import-not-found]

from polyattn.errors import PolyAttentionError
from polyattn.planning import REFERENCE_MAX_TUPLES
from polyattn.polynomial import parse

__all__ = ["MECHANISMS", "IMPLS", "MODES", "DEFAULT_CONFIG", "Sweep", "KernelsConfig", "polynomial_of", "load_config"]

MECHANISMS: dict[str, str] = {
    "self": "x1*x2",
    "path2": "x1*x2 + x2*x3",
    "path3": "x1*x2 + x2*x3 + x3*x4",
    "star3": "x1*x2 + x1*x3",
    "tree4": "x1*x2 + x1*x3 + x2*x4 + x2*x5",
    "strassen": "x1*x2 + x1*x3 + x2*x3",
    "tensor3": "x1*x2*x3",
}
IMPLS = ("polyattn", "sdpa", "reference", "einsum", "matmul", "autograd", "peers")
MODES = ("fwd", "fwdbwd")
DEFAULT_CONFIG = "benchmarks/default.toml"


@dataclass
class Sweep:
    name: str = "default"
    mechanisms: list[str] = field(default_factory=lambda: ["self", "path2", "tree4"])
    n: list[int] = field(default_factory=lambda: [256, 512, 1024])
    d: list[int] = field(default_factory=lambda: [64])
    batch_heads: int = 4
    modes: list[str] = field(default_factory=lambda: ["fwd", "fwdbwd"])
    impls: list[str] = field(default_factory=lambda: [i for i in IMPLS if i != "autograd"])
    input_scale: float = 1.0  # queries ~ input_scale * N(0, 1): large values probe overflow
    # overrides [kernels] repeats: one int, or one per entry of n (e.g. 1 for the minute-long cubic cases)
    repeats: int | list[int] | None = None
    measure_memory: bool = True  # False skips phase 2 (one more full call per case)
    memory_budget: int | None = None  # passed to poly_attention (None: the library default)


@dataclass
class KernelsConfig:
    sweeps: list[Sweep] = field(default_factory=lambda: [Sweep()])
    repeats: int = 5
    warmup: int = 1
    max_memory_gb: float = 4.0
    reference_max_tuples: int = min(REFERENCE_MAX_TUPLES, 2**24)
    einsum_max_elems: int = 2**27
    out: str = "benchmarks/results/kernels.json"
    plot: str | None = "docs/figures/bench_kernels.png"
    check: bool = True  # compare each implementation's output with polyattn's
    # peak memory = min over this many measured calls: the first call after the allocator is
    # retuned for measuring may reuse heap (and worker-thread arena) memory from the timing phase
    memory_repeats: int = 2


def polynomial_of(mech: str) -> tuple[str, str]:
    """(label, canonical polynomial) for a mechanism name or a polynomial spec."""
    if mech in MECHANISMS:
        return mech, str(parse(MECHANISMS[mech]))
    return mech, str(parse(mech))  # raises PolynomialSyntaxError with a column pointer


def load_config(path: str | None) -> KernelsConfig:
    cfg = KernelsConfig()
    if path is None:
        return cfg
    with open(path, "rb") as f:
        data = tomllib.load(f)
    sec = data.get("kernels", data)
    sweeps = sec.pop("sweep", None)
    for k, v in sec.items():
        if not hasattr(cfg, k) or k == "sweeps":
            raise PolyAttentionError(
                f"{path}: unknown key {k!r} in [kernels]; known keys: "
                + ", ".join(f for f in KernelsConfig.__dataclass_fields__ if f != "sweeps")
            )
        setattr(cfg, k, v)
    if sweeps is not None:
        cfg.sweeps = []
        for i, s in enumerate(sweeps):
            unknown = set(s) - set(Sweep.__dataclass_fields__)
            if unknown:
                raise PolyAttentionError(
                    f"{path}: unknown key(s) {sorted(unknown)} in [[kernels.sweep]] #{i + 1}; known: "
                    + ", ".join(Sweep.__dataclass_fields__)
                )
            sw = Sweep(**s)
            reps = sw.repeats if isinstance(sw.repeats, list) else [sw.repeats or 1]
            if (isinstance(sw.repeats, list) and len(sw.repeats) != len(sw.n)) or min(reps) < 1:
                raise PolyAttentionError(
                    f"{path}: [[kernels.sweep]] #{i + 1}: repeats must be an int >= 1 or a list of them, "
                    f"one per entry of n ({len(sw.n)})"
                )
            unknown_impls = set(sw.impls) - set(IMPLS)
            if unknown_impls:
                raise PolyAttentionError(
                    f"{path}: [[kernels.sweep]] #{i + 1}: unknown implementation(s) {sorted(unknown_impls)}; "
                    f"choose from {', '.join(IMPLS)}"
                )
            cfg.sweeps.append(sw)
    return cfg
