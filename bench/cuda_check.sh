#!/usr/bin/env bash
# One GPU visit (issue "Speed", target 5): bench/speed.py on CUDA, eager fp32 vs fast bf16, states and
# pixels; then a few hundred frames of pretrain.py, finetune.py and offline_train.py with
# device=cuda precision=16, so a CUDA-only fault shows up. Results go to $OUT (default /tmp/cuda_check).
#     bash bench/cuda_check.sh
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/cuda_check}
mkdir -p "$OUT"
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1
PY=${PY:-python3}
step() { local name=$1; shift; echo "=== $name"; local start=$SECONDS
  timeout "${STEP_TIMEOUT:-150}" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "rc=$rc seconds=$((SECONDS - start))"; tail -n 4 "$OUT/$name.log"; }
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
cd "$REPO"
step speed_states_eager $PY bench/speed.py --device cuda --obs states --batch 50x50 --mode eager --repeats 3 --json
step speed_states_fast16 $PY bench/speed.py --device cuda --obs states --batch 50x50 --mode fast --precision 16 --repeats 3 --json --no-flops
step speed_pixels_eager $PY bench/speed.py --device cuda --obs pixels --batch 50x50 --mode eager --repeats 2 --env-steps 60 --json
step speed_pixels_fast16 $PY bench/speed.py --device cuda --obs pixels --batch 50x50 --mode fast --precision 16 --repeats 2 --env-steps 60 --json --no-flops
W=$(mktemp -d)
cd "$W"
common="agent=choreo device=cuda precision=16 progress=false"
step pretrain_states $PY "$REPO/pretrain.py" configs=dmc_states $common domain=walker num_train_frames=1000 num_seed_frames=300 snapshots=[1000] save_dataset=True hydra.run.dir="$W/pt_states"
step finetune_states $PY "$REPO/finetune.py" configs=dmc_states $common task=walker_stand snapshot_ts=1000 num_train_frames=1000 num_seed_frames=300 agent.num_init_frames=300 eval_every_frames=1000 num_eval_episodes=1 hydra.run.dir="$W/ft_states"
step offline_states $PY "$REPO/offline_train.py" configs=dmc_states agent=choreo device=cuda precision=16 domain=walker dataset_dir="$W/pt_states/buffer" num_train_updates=50 snapshots=[50] eval_every_updates=50 hydra.run.dir="$W/off_states"
step pretrain_pixels $PY "$REPO/pretrain.py" configs=dmc_pixels $common domain=walker num_train_frames=600 num_seed_frames=200 snapshots=[600] hydra.run.dir="$W/pt_pixels"
step finetune_pixels $PY "$REPO/finetune.py" configs=dmc_pixels $common task=walker_stand snapshot_ts=600 num_train_frames=600 num_seed_frames=200 agent.num_init_frames=200 eval_every_frames=600 num_eval_episodes=1 hydra.run.dir="$W/ft_pixels"
ls -R "$W" | grep -E "snapshot|csv" | sort | uniq -c | head -20
