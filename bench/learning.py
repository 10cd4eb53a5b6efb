"""Learning check: pre-train walker on states with the CPU preset, then fine-tune walker_stand from
the snapshot, and plot the fine-tuning eval return against frames. A benchmark, run by hand.

    python bench/learning.py --out bench/learning

The defaults are the best setting measured within the 60-minute budget on 2 CPU cores (bench/RESULTS.md,
"Learning at action repeat 2"): the original's action-repeat-2 states config, 20k pre-training frames,
30k fine-tuning frames with an update every 2 agent steps (``train_every_actions=5`` counts frames).

Writes ``<out>/learning.png`` and ``<out>/learning.json`` (the eval curve, wall times, seconds per
update) and prints the curve. The random policy scores about 130-160 on walker_stand.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(script: str, args: list[str], cwd: Path) -> float:
    start = time.time()
    command = [sys.executable, str(REPO / script), *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, check=True)
    return time.time() - start


def read_csv(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with path.open() as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-frames", type=int, default=20000)
    parser.add_argument("--finetune-frames", type=int, default=30000)
    parser.add_argument("--eval-every", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--configs", default="dmc_states_ar2", choices=("dmc_states", "dmc_states_ar2"),
                        help="observation config (action repeat 2 or 1)")
    parser.add_argument("--train-every", type=int, default=5,
                        help="fine-tuning: an update every this many frames (train_every_actions)")
    parser.add_argument("--out", default=str(REPO / "bench" / "learning"))
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for both scripts")
    parser.add_argument("--finetune-extra", nargs="*", default=[], help="more overrides for finetune.py only")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = [f"configs={args.configs}", "agent=choreo", "preset=cpu", f"seed={args.seed}", *args.extra]

    pretrain_dir = out / "pretrain_run"
    pretrain_s = run("pretrain.py", common + [
        "domain=walker", f"num_train_frames={args.pretrain_frames}", f"snapshots=[{args.pretrain_frames}]",
        f"hydra.run.dir={pretrain_dir}"], cwd=out)
    finetune_dir = out / "finetune_run"
    finetune_s = run("finetune.py", common + [
        "task=walker_stand", f"snapshot_ts={args.pretrain_frames}", f"num_train_frames={args.finetune_frames + 10}",
        f"eval_every_frames={args.eval_every}", f"num_eval_episodes={args.eval_episodes}",
        f"train_every_actions={args.train_every}", f"hydra.run.dir={finetune_dir}", *args.finetune_extra], cwd=out)

    evals = read_csv(finetune_dir / "eval.csv")
    curve = [(int(row["frame"]), row["episode_reward"]) for row in evals]
    pretrain_train = read_csv(pretrain_dir / "train.csv")
    result = {
        "pretrain_frames": args.pretrain_frames, "finetune_frames": args.finetune_frames,
        "configs": args.configs, "train_every": args.train_every, "extra": args.extra,
        "finetune_extra": args.finetune_extra,
        "pretrain_wall_s": round(pretrain_s, 1), "finetune_wall_s": round(finetune_s, 1),
        "pretrain_episode_returns": [row["episode_reward"] for row in pretrain_train],
        "finetune_eval_curve": curve,
        "finetune_train_returns": [(int(r["frame"]), r["episode_reward"]) for r in read_csv(finetune_dir / "train.csv")],
    }
    (out / "learning.json").write_text(json.dumps(result, indent=1))
    print(f"pre-training {args.pretrain_frames} frames: {pretrain_s / 60:.1f} min; "
          f"fine-tuning {args.finetune_frames} frames: {finetune_s / 60:.1f} min")
    for frame, value in curve:
        print(f"  walker_stand eval at {frame:>6} fine-tuning frames: {value:8.1f}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if curve:
        ax.plot(*zip(*curve), marker="o", label="fine-tuned (eval, mean action)")
    ax.axhspan(130, 160, color="grey", alpha=0.3, label="random policy (130-160)")
    ax.axhline(390, color="black", linestyle="--", linewidth=1, label="target: 3x random (about 390)")
    ax.set_xlabel("fine-tuning frames")
    ax.set_ylabel("walker_stand return")
    ax.set_title(f"walker: pre-train {args.pretrain_frames // 1000}k frames (CPU preset), fine-tune stand")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "learning.png", dpi=120)
    print(f"wrote {out / 'learning.png'}")


if __name__ == "__main__":
    main()
