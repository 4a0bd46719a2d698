"""Typed training configuration, loaded from TOML with ``--set key=value`` overrides.

A config is a tree of dataclasses (``[task]``, ``[model]``, ``[optim]``, ``[eval]`` sections plus
top-level keys and a ``[[mechanisms]]`` array). Loading is strict: an unknown key anywhere, or a
value of the wrong type, raises :class:`ConfigError` naming the key and the expected type.

Overrides use dotted keys and TOML values (``optim.lr=3e-4``, ``seeds=[0,1,2]``,
``model.polynomial="x1*x2 + x2*x3"``); a value that is not valid TOML is taken as a string, so
``--set model.polynomial=x1*x2`` also works. Values are never evaluated as code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PolyAttentionError
from ..planning.placement import PLACEMENTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ConfigError", "TaskConfig", "ModelConfig", "MechanismConfig", "OptimConfig", "EvalConfig",
    "TrainConfig", "load_config", "apply_overrides", "config_from_dict", "config_to_dict",
]


class ConfigError(PolyAttentionError):
    """A training configuration is malformed (unknown key, wrong type, bad value)."""


@dataclass
class TaskConfig:
    """Task name and its parameters (``None`` = the task's default; see :mod:`polyattn.tasks`)."""

    name: str = "composition"
    r: int | None = None
    m: int | None = None
    n: int | None = None
    modulus: int | None = None
    colors: int | None = None
    p: float | None = None
    train_size: int | None = None
    test_size: int | None = None
    bos: bool | None = None  # match3: a BOS token first
    distribution: str | None = None  # match3: "uniform" or "binned"
    pair_matches: bool | None = None  # match3: False drops sequences with pair-only matches

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "name" and getattr(self, f.name) is not None}


@dataclass
class ModelConfig:
    """:class:`polyattn.PolyTransformer` hyper-parameters (defaults for every mechanism)."""

    dim: int = 64
    depth: int = 1
    heads: int = 1
    dim_head: int | None = None
    mlp_ratio: float = 4.0
    pos_emb: bool = False
    dropout: float = 0.0
    method: str = "auto"
    polynomial: str = "x1*x2"
    valueless: list[int] = field(default_factory=list)
    norm: bool = True  # LayerNorms in the blocks and before the head
    embedding: str = "lookup"  # "lookup" (tables), "numeric" (raw [x, x², (p, p²), 1] -> linear) or "both"


@dataclass
class MechanismConfig:
    """One compared mechanism: a name and overrides of the model defaults."""

    name: str = "self-attention"
    polynomial: str | None = None
    depth: int | None = None
    heads: int | None = None
    dim: int | None = None
    valueless: list[int] | None = None  # value-less variables (see PolyAttention)
    value_placement: str | None = None  # "own" (default, the paper's formula) or "root" (authors' code)


@dataclass
class OptimConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    grad_clip: float = 1.0
    loss: str = "ce"  # "ce" (softmax cross-entropy) or "bce" (one logit, binary tasks only)


@dataclass
class EvalConfig:
    every: int = 250
    test_size: int = 1000
    batch_size: int = 500


@dataclass
class TrainConfig:
    name: str = "run"
    out_dir: str = "runs/run"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    checkpoint_every: int = 250
    threads: int = 1
    device: str = "cpu"
    progress: bool = True
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mechanisms: list[MechanismConfig] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def resolved_mechanisms(self) -> list[MechanismConfig]:
        """Mechanisms with every field filled from the model defaults (one if none listed)."""
        mechs = self.mechanisms or [MechanismConfig(name=self.model.polynomial)]
        out = []
        for mc in mechs:
            out.append(MechanismConfig(
                name=mc.name,
                polynomial=mc.polynomial or self.model.polynomial,
                depth=mc.depth or self.model.depth,
                heads=mc.heads or self.model.heads,
                dim=mc.dim or self.model.dim,
                valueless=list(self.model.valueless if mc.valueless is None else mc.valueless),
                value_placement=mc.value_placement or "own",
            ))
        names = [m.name for m in out]
        if len(set(names)) != len(names):
            raise ConfigError(f"mechanism names must be unique, got {names}")
        return out

    def validate(self) -> None:
        o = self.optim
        if o.steps < 1 or o.batch_size < 1 or o.lr <= 0:
            raise ConfigError("optim.steps, optim.batch_size and optim.lr must be positive")
        if self.eval.every < 1 or self.checkpoint_every < 1:
            raise ConfigError("eval.every and checkpoint_every must be >= 1")
        if o.loss not in ("ce", "bce"):
            raise ConfigError(f"optim.loss must be 'ce' or 'bce', got {o.loss!r}")
        if self.model.embedding not in ("lookup", "numeric", "both"):
            raise ConfigError(f"model.embedding must be 'lookup', 'numeric' or 'both', got {self.model.embedding!r}")
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed, e.g. seeds = [0, 1, 2]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct, got {self.seeds}")
        for mc in self.mechanisms:
            if mc.value_placement is not None and mc.value_placement not in PLACEMENTS:
                raise ConfigError(
                    f"mechanism {mc.name!r}: value_placement must be 'own' or 'root', got {mc.value_placement!r}"
                )
        self.resolved_mechanisms()

    def fingerprint(self) -> str:
        """Hash of everything that determines the trained weights (not out_dir/progress/threads)."""
        d = config_to_dict(self)
        for k in ("out_dir", "progress", "threads", "name", "seeds", "mechanisms"):
            d.pop(k, None)
        # options at their defaults are left out: keeps fingerprints of runs made before them
        for sec, key, default in (("model", "valueless", []), ("model", "norm", True),
                                  ("model", "embedding", "lookup"), ("optim", "loss", "ce")):
            if d[sec][key] == default:
                del d[sec][key]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table of {tp.__name__} fields, got {value!r}")
        return _from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover
        raise ConfigError(f"{key}: unsupported field type {tp}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in [{prefix}]" if prefix else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(repr(k) for k in unknown)}{where}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    cfg = _from_dict(TrainConfig, data)
    cfg.validate()
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys) to a raw config dict, in place; returns it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        parts = [p.strip() for p in key.strip().split(".")]
        if not all(parts):
            raise ConfigError(f"--set: bad key {key!r}")
        cls: Any = TrainConfig
        node = data
        for i, p in enumerate(parts):
            names = {f.name: f for f in dataclasses.fields(cls)}
            if p not in names:
                where = ".".join(parts[:i]) or "top level"
                raise ConfigError(
                    f"--set {key}: unknown key {p!r} at {where}; valid keys: {', '.join(sorted(names))}"
                )
            if i == len(parts) - 1:
                node[p] = _parse_value(text.strip())
            else:
                sub = typing.get_type_hints(cls)[p]
                if not dataclasses.is_dataclass(sub):
                    raise ConfigError(f"--set {key}: {p!r} is not a section")
                node = node.setdefault(p, {})
                cls = sub
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a TOML config (or the defaults when ``path`` is None) and apply ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: invalid TOML: {e}") from None
    apply_overrides(data, overrides)
    return config_from_dict(data)
