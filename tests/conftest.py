import os

import torch
from hypothesis import HealthCheck, settings

# Deterministic, deadline-free property runs: CI must not flake on a busy shared machine.
settings.register_profile(
    "polyattn",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "polyattn"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
