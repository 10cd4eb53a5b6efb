#!/usr/bin/env bash
# Fine-tuning fidelity at the original's settings (issue "finetune.py", acceptance 3), several seeds
# at once: the issue's command per seed, eval.csv of each copied to $OUT as it grows, then a table
# beside the original's curve. On a GPU machine all seeds fit one visit (a few minutes); on the
# 2-core CPU run one seed at a time (about 40 minutes each).
#     SEEDS="1 2 3 4" bash bench/fidelity.sh        # OUT=/tmp/fidelity by default
# On a device visit carry .site312 and .gl and unpack the EGL loaders first (see bench/cuda_check.sh's
# RESULTS entry): dm_control opens EGL at import when MUJOCO_GL=egl, states runs too.
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/fidelity}
SEEDS=${SEEDS:-1 2 3}
LIMIT=${LIMIT:-3000}
PY=${PY:-python3}
mkdir -p "$OUT"
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
WORK=$(mktemp -d)
for seed in $SEEDS; do
  (cd "$WORK" && timeout "$LIMIT" $PY "$REPO/finetune.py" configs=dmc_states agent=choreo task=walker_stand \
      snapshot_ts=0 seed="$seed" batch_size=16 batch_length=32 num_train_frames=12000 num_seed_frames=4000 \
      eval_every_frames=2000 num_eval_episodes=2 progress=false $EXTRA hydra.run.dir="$WORK/seed$seed" \
      > "$OUT/seed$seed.log" 2>&1 &)
done
sleep 5
while pgrep -f "hydra.run.dir=$WORK" > /dev/null; do
  for seed in $SEEDS; do cp "$WORK/seed$seed/eval.csv" "$OUT/eval_seed$seed.csv" 2> /dev/null; done
  sleep 5
done
for seed in $SEEDS; do cp "$WORK/seed$seed/eval.csv" "$OUT/eval_seed$seed.csv" 2> /dev/null; done
$PY - "$OUT" $SEEDS <<'EOF'
import csv, statistics, sys
from pathlib import Path
out, seeds = Path(sys.argv[1]), sys.argv[2:]
original = {2000: 113, 4000: 108, 6000: 134, 8000: 188, 10000: 156}
curves = {}
for seed in seeds:
    path = out / f"eval_seed{seed}.csv"
    if path.exists():
        curves[seed] = {int(float(r["frame"])): float(r["episode_reward"]) for r in csv.DictReader(path.open())}
print("frames    " + "".join(f"{'seed ' + s:>10}" for s in curves) + "      mean  original")
for frame in sorted({f for c in curves.values() for f in c}):
    values = [c.get(frame) for c in curves.values()]
    present = [v for v in values if v is not None]
    cells = "".join(f"{v:10.1f}" if v is not None else f"{'-':>10}" for v in values)
    print(f"{frame:<10}{cells}{statistics.mean(present):10.1f}{original.get(frame, float('nan')):10.0f}")
EOF
