"""Training harness: typed TOML config, seeded multi-seed runs, checkpoints, metrics, plots, DDP."""

from .config import ConfigError, TrainConfig, load_config
from .loop import build_model, evaluate, train_cell
from .runner import run

__all__ = ["ConfigError", "TrainConfig", "load_config", "build_model", "evaluate", "train_cell", "run"]
