#!/usr/bin/env bash
# Fine-tuning settings side by side from one pre-trained snapshot (issue "finetune.py", the learning
# check): every setting x seed runs at once, each seed starting from a copy of the same snapshot; the
# eval.csv files are copied to $OUT as they grow and a table of mean eval return per setting follows.
# Meant for a machine with cores (or a GPU) to spare; on the 2-core CPU run two at a time.
#     SNAPSHOT=/tmp/learn_ar2/pretrained_models/states/walker/choreo/1/snapshot_20000.pt \
#     SETTINGS="paper: ;critic_lr: critic_opt.lr=3e-4" SEEDS="2 3" \
#     EXTRA="preset=cpu configs=dmc_states_ar2 train_every_actions=5" bash bench/finetune_sweep.sh
# FRAMES (25010), EVERY (5000), EPISODES (5), LIMIT (seconds, 3600), TASK (walker_stand), OUT (/tmp/ft_sweep).
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/ft_sweep}
PY=${PY:-python3}
: "${SNAPSHOT:?SNAPSHOT=path/to/snapshot_<ts>.pt is required}"
[ -f "$SNAPSHOT" ] || { echo "SNAPSHOT=$SNAPSHOT: no such file" >&2; exit 2; }
ts=$(basename "$SNAPSHOT" .pt); ts=${ts#snapshot_}
mkdir -p "$OUT"
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
IFS=';' read -r -a settings <<< "${SETTINGS:-paper: }"
names=()
for setting in "${settings[@]}"; do
  name=$(echo "${setting%%:*}" | tr -d ' '); overrides=${setting#*:}; names+=("$name")
  for seed in ${SEEDS:-1 2}; do
    mkdir -p "$WORK/snaps/$seed"; [ -f "$WORK/snaps/$seed/$(basename "$SNAPSHOT")" ] || cp "$SNAPSHOT" "$WORK/snaps/$seed/"
    # $overrides and $EXTRA are word-split on purpose: each word is one Hydra override.
    (cd "$WORK" && timeout "${LIMIT:-3600}" $PY "$REPO/finetune.py" configs=dmc_states agent=choreo \
        task="${TASK:-walker_stand}" snapshot_ts="$ts" custom_snap_dir="$WORK/snaps" seed="$seed" \
        num_train_frames="${FRAMES:-25010}" eval_every_frames="${EVERY:-5000}" \
        num_eval_episodes="${EPISODES:-5}" progress=false $EXTRA $overrides \
        hydra.run.dir="$WORK/$name.seed$seed" > "$OUT/$name.seed$seed.log" 2>&1 &)
  done
done
sleep 5
collect() { for run in "$WORK"/*.seed*; do cp "$run/eval.csv" "$OUT/$(basename "$run").eval.csv" 2> /dev/null; done; }
while pgrep -f "hydra.run.dir=$WORK/" > /dev/null; do collect; sleep 5; done
collect
$PY - "$OUT" "${names[@]}" <<'EOF'
import csv, statistics, sys
from pathlib import Path
out, names = Path(sys.argv[1]), sys.argv[2:]
for name in names:
    curves = {}
    for path in sorted(out.glob(f"{name}.seed*.eval.csv")):
        seed = path.name.split(".seed")[1].split(".")[0]
        curves[seed] = {int(float(r["frame"])): float(r["episode_reward"]) for r in csv.DictReader(path.open())}
    if not curves:
        print(f"{name}: no eval.csv (see {out}/{name}.seed*.log)")
        continue
    print(f"{name}\n  frames   " + "".join(f"{'seed ' + s:>10}" for s in curves) + "      mean")
    for frame in sorted({f for c in curves.values() for f in c}):
        values = [c.get(frame) for c in curves.values()]
        cells = "".join(f"{v:10.1f}" if v is not None else f"{'-':>10}" for v in values)
        print(f"  {frame:<9}{cells}{statistics.mean(v for v in values if v is not None):10.1f}")
EOF
