#!/usr/bin/env bash
# The exact `polyattn train` commands behind docs/results, from the repository root. They were run
# as parallel background jobs under `nice` (single-threaded each: threads = 1 in every config);
# a run split over several processes (`--set seeds=[s]`, `--only NAME`) writes into the same
# out_dir, and `--resume` skips finished cells / continues interrupted ones, so running the
# commands one after another gives the same cells. Seeds and data are deterministic.
set -euo pipefail
P=.venv/bin/polyattn
T() { $P train --no-progress --resume "$@"; }

# 2-fold composition, m = 25 (the paper's setting), 4000 steps
for s in 0 1 2; do
  T -c configs/composition_m25.toml --only "tree x1*x2+x2*x3" --set "seeds=[$s]"
  T -c configs/composition_m25.toml --only "tree, x2 value-less" --set "seeds=[$s]"
  T -c configs/composition_m25.toml --only "self-attention L2" --set "seeds=[$s]"
done
T -c configs/composition_m25.toml --only "self-attention L1"
# same, tree only, 8000 steps
for s in 0 1 2; do T -c configs/composition_m25_long.toml --set "seeds=[$s]"; done
# accuracy vs m: m = 8 (2000 steps) and m = 12 (all four 1-layer mechanisms, 1500 steps)
T -c configs/composition_m25.toml --set task.m=8 --set optim.steps=2000 --out runs/composition_m8 \
  --only "self-attention L1" --only "tree x1*x2+x2*x3"
T -c configs/composition_m12.toml
# 3-fold composition, m = 16, 4000 steps
for s in 0 1 2; do
  T -c configs/composition3_m16.toml --only "path h3" --set "seeds=[$s]"
  T -c configs/composition3_m16.toml --only "self-attention L1" --set "seeds=[$s]"
done
# Match3 and binary relation composition
T -c configs/match3.toml
T -c configs/relation.toml
# tuned recipe (no MLP, value-less inner variables, constant lr)
T -c configs/composition_m25_tuned.toml --set 'out_dir="runs/composition_m25_tuned"'
for m in 8 16; do
  T -c configs/composition_m25_tuned.toml --set task.m=$m \
    --set "name=\"2-fold composition, m = $m (tuned: no MLP, x2 value-less)\"" --out runs/composition_m${m}_tuned \
    --only "tree x1*x2+x2*x3, x2 value-less" --only "self-attention L1"
done
T -c configs/composition3_m16_tuned.toml
for s in 1 2; do
  T -c configs/composition3_m16_tuned.toml --set "seeds=[$s]" --set optim.steps=8000 --set "out_dir=\"runs/h3_long_s$s\""
done
T -c configs/composition_m25_tuned_cubic.toml --only "strassen"
T -c configs/composition_m25_tuned_cubic.toml --only "tensor x1*x2*x3"
T -c configs/composition3_m8_tuned.toml --only "strassen"
T -c configs/composition3_m8_tuned.toml --only "tensor x1*x2*x3"
T -c configs/composition3_m8_tuned.toml --only "path h3, x2 x3 value-less" --only "self-attention L1"
# (the m = 8 run's summary title was set with --set 'name="2-fold composition, m = 8"' when collected with --summary-only)
# collected summaries, plots and tables
# (tuned runs first: accuracy_vs_m.png is made from the tuned m = 8 / 16 / 25 runs)
.venv/bin/python -m polyattn.train.report --out docs/results runs/composition_m8_tuned runs/composition_m16_tuned \
  runs/composition_m25_tuned runs/composition_m25_tuned_cubic runs/composition3_m8_tuned runs/composition3_m16_tuned runs/composition_m25 \
  runs/composition_m25_long runs/composition_m8 runs/composition_m12 runs/composition3_m16 runs/match3 runs/relation \
  --vs-m composition_m8_tuned composition_m16_tuned composition_m25_tuned
# shortcut (plateau) rates
python docs/results/shortcut_rates.py
# training step time, tree vs self-attention (same run, interleaved)
.venv/bin/python -m polyattn.train.steptime --out docs/results/steptime --rounds 7
