#!/usr/bin/env bash
# The pilots that placed the CPU claim presets (docs/claims.md, "How the presets were placed"):
# each runs the no-warmup arm only, over an lr grid, before the preset was written. Reruns them
# into outputs/pilots/ and prints the tables docs/claims.md shows (same seeds, same numbers).
#   bash scripts/pilots.sh            # all of them, about 15 min on 2 cores
#   bash scripts/pilots.sh mnist1d    # only the MNIST-1D ones (about 5 min)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=outputs/pilots
only=${1:-all}
mkdir -p "$OUT"

M1D="data=mnist1d model=resnet1d scheduler=warmupcosine scheduler.warmup_ratio=0.0 trainer.max_steps=1000
     trainer.batch_size=64 trainer.eval_interval=1000 trainer.log_interval=25 trainer.threads=1 trainer.progress=false
     trainer.checkpoint_interval=null"
# the byte LM of claims 2 and 4: the postln_needs_warmup preset's settings, its claim not judged here
LM="experiment=postln_needs_warmup scheduler.warmup_ratio=0.0 study.max_seeds=null study.budget_minutes=null seed=0,1"

pilot() {  # name, overrides...
  local name=$1; shift
  echo "== $name" >&2
  $PY train.py -m "$@" hydra.sweep.dir="$OUT/$name" > "$OUT/$name.log" 2>&1
  $PY scripts/pilot_table.py "$OUT/$name" --by optimizer.lr
}

if [[ $only == all || $only == mnist1d ]]; then
  # claims 1, 3, 5, 7: a 1-D ResNet-8 (width 16) on MNIST-1D (10k signals), 1000 steps, no warmup
  pilot mnist1d_adamw_nowarmup $M1D seed=0,1 optimizer=adamw 'optimizer.betas=[0.9,0.98]' \
    optimizer.lr=0.001,0.003,0.01,0.03,0.1,0.3
  pilot mnist1d_sgd_nowarmup $M1D seed=0,1 optimizer=sgd optimizer.lr=0.03,0.1,0.3,1.0,3.0,10.0
  # does more depth move the edge? ResNet-20, one seed
  pilot mnist1d_depth20_adamw_nowarmup $M1D model.depth=20 seed=0 optimizer=adamw 'optimizer.betas=[0.9,0.98]' \
    optimizer.lr=0.03,0.3,1.0
  pilot mnist1d_depth20_sgd_nowarmup $M1D model.depth=20 seed=0 optimizer=sgd optimizer.lr=0.3,3.0
fi
if [[ $only == all || $only == bytes ]]; then
  # claims 2 and 4: a 6-layer byte LM (d_model 64, 4 heads, context 64), 400 steps, no warmup
  pilot bytes_postln_nowarmup $LM model.norm_first=false optimizer.lr=0.001,0.003,0.01
  pilot bytes_preln_nowarmup $LM model.norm_first=true optimizer.lr=0.003,0.01,0.03
fi
