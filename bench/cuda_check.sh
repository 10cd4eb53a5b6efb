#!/usr/bin/env bash
# One GPU visit (issue "Speed", target 5): bench/speed.py on CUDA, eager fp32 against fast bf16
# (CUDA graphs, with and without compile=true), states and pixels; the CUDA-graph check (graphed and
# compiled updates give the losses of the plain fast update); then a few hundred frames of
# pretrain.py, finetune.py and offline_train.py with device=cuda precision=16, so a CUDA-only fault
# shows up; and the training loop's update step without and with prefetched batches. Everything goes to one log and one JSON-lines file in $OUT (default /tmp/cuda_check).
#     bash bench/cuda_check.sh   # QUICK=1: the main rows and states script runs only;
#                                # SCRIPT_EXTRA="compile=true": the script runs with those overrides
#                                # ONLY="speed_pixels_loop finetune_states": just the steps named
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/cuda_check}
mkdir -p "$OUT"
LOG="$OUT/cuda_check.log"
JSON="$OUT/speed.jsonl"
export MUJOCO_GL=${MUJOCO_GL:-egl} PYTHONUNBUFFERED=1
PY=${PY:-python3}
step() { local name=$1; shift
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  echo "=== $name" | tee -a "$LOG"; local start=$SECONDS
  timeout "${STEP_TIMEOUT:-150}" "$@" > "$OUT/step.out" 2>&1; local rc=$?
  cat "$OUT/step.out" >> "$LOG"
  echo "rc=$rc seconds=$((SECONDS - start))" | tee -a "$LOG"; tail -n 3 "$OUT/step.out"
  if grep -q '^{' "$OUT/step.out"; then echo "{\"run\": \"$name\", \"result\": $(grep '^{' "$OUT/step.out" | tail -1)}" >> "$JSON"; fi
  rm -f "$OUT/step.out"; }
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee -a "$LOG"
cd "$REPO"
speed="$PY bench/speed.py --device cuda --batch 50x50 --json"
step speed_states_eager $speed --obs states --mode eager --repeats 5
step speed_states_fast16 $speed --obs states --mode fast --precision 16 --repeats 5 --no-flops
step speed_states_fast16_compile $speed --obs states --mode fast --precision 16 --repeats 5 --no-flops --compile
step speed_pixels_eager $speed --obs pixels --mode eager --repeats 3 --env-steps 60
step speed_pixels_fast16 $speed --obs pixels --mode fast --precision 16 --repeats 3 --env-steps 60 --no-flops
step speed_pixels_fast16_compile $speed --obs pixels --mode fast --precision 16 --repeats 3 --env-steps 60 --no-flops --compile
# The loop's update step (batch, update, one env step, read the losses) without and with prefetched batches.
step speed_pixels_loop $speed --obs pixels --mode fast --precision 16 --repeats 5 --env-steps 60 --no-flops --loop
step speed_pixels_loop_prefetch $speed --obs pixels --mode fast --precision 16 --repeats 5 --env-steps 60 --no-flops --loop --prefetch
step graph_check_states_compile $PY bench/cuda_graph_check.py --obs states --batch 50x50 --updates 5 --compile
step graph_check_finetune16_compile $PY bench/cuda_graph_check.py --obs states --batch 50x50 --updates 5 --finetune --precision 16 --compile
if [ -z "$QUICK" ]; then
  step speed_states_fast32 $speed --obs states --mode fast --repeats 5 --no-flops
  step speed_states_fast16_nographs $speed --obs states --mode fast --precision 16 --repeats 5 --no-flops --no-graphs
  step graph_check_states $PY bench/cuda_graph_check.py --obs states --batch 50x50 --updates 5
fi
W=$(mktemp -d)
cd "$W"
common="agent=choreo device=cuda precision=16 progress=false $SCRIPT_EXTRA"
step pretrain_states $PY "$REPO/pretrain.py" configs=dmc_states $common domain=walker num_train_frames=1000 num_seed_frames=300 snapshots=[1000] save_dataset=True hydra.run.dir="$W/pt_states"
step finetune_states $PY "$REPO/finetune.py" configs=dmc_states $common task=walker_stand snapshot_ts=1000 num_train_frames=1000 num_seed_frames=300 agent.num_init_frames=300 eval_every_frames=1000 num_eval_episodes=1 hydra.run.dir="$W/ft_states"
if [ -z "$QUICK" ]; then
  step offline_states $PY "$REPO/offline_train.py" configs=dmc_states agent=choreo device=cuda precision=16 $SCRIPT_EXTRA domain=walker dataset_dir="$W/pt_states/buffer" num_train_updates=50 snapshots=[50] eval_every_updates=50 hydra.run.dir="$W/off_states"
  step pretrain_pixels $PY "$REPO/pretrain.py" configs=dmc_pixels $common domain=walker num_train_frames=600 num_seed_frames=200 snapshots=[600] hydra.run.dir="$W/pt_pixels"
  step finetune_pixels $PY "$REPO/finetune.py" configs=dmc_pixels $common task=walker_stand snapshot_ts=600 num_train_frames=600 num_seed_frames=200 agent.num_init_frames=200 eval_every_frames=600 num_eval_episodes=1 hydra.run.dir="$W/ft_pixels"
fi
grep -h -i "could not be" "$LOG" | sort | uniq -c | tee -a "$LOG"
ls -R "$W" | grep -E "snapshot|csv" | sort | uniq -c | head -20 | tee -a "$LOG"
