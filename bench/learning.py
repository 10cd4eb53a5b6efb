"""Learning check: pre-train walker on states with the CPU preset, then fine-tune walker_stand from
the snapshot, and plot the fine-tuning eval return against frames. A benchmark, run by hand.

    python bench/learning.py --out bench/learning

The defaults are the best setting measured within the 60-minute budget on 2 CPU cores (bench/RESULTS.md,
"Learning at action repeat 2"): the original's action-repeat-2 states config, 20k pre-training frames,
30k fine-tuning frames with an update every 2 agent steps (``train_every_actions=5`` counts frames).

Writes ``<out>/learning.png`` and ``<out>/learning.json`` (the eval curve, wall times, the random
policy's return measured here at the same action repeat) and prints the curve with each point's
ratio to the random policy. The random policy scores about 125-135 on walker_stand.

It also says where the fine-tuned walker holds its torso (height and uprightness over the second
half of a few episodes; the task pays in full from 1.2 m) and how much of the replayed data, past
each episode's initial drop, has the torso above 0.9 m: a policy cannot learn in imagination to
reach states its world model never saw. ``--report-only`` redoes this report for an existing ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from env_check import random_returns  # noqa: E402  (bench/, beside this script)


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


# dm_control's walker observation is orientations (14 values), torso height, velocities.
HEIGHT_INDEX = 14
# The walker starts each episode in the air and lands within a few agent steps.
DROP_STEPS = 25


def torso_coverage(buffer: Path, threshold: float = 0.9) -> dict[str, float]:
    """Share of stored steps, past each episode's initial drop, with the torso above ``threshold``."""
    heights = [np.load(path)["observation"][DROP_STEPS:, HEIGHT_INDEX] for path in sorted(buffer.glob("*.npz"))]
    if not heights:
        return {}
    heights = np.concatenate(heights)
    return {"steps": int(heights.size), f"share_above_{threshold}": round(float((heights > threshold).mean()), 4),
            "mean_height": round(float(heights.mean()), 3)}


def posture(cfg, run_dir: Path, episodes: int, seed: int) -> dict[str, float]:
    """Torso height and uprightness of the fine-tuned policy of ``run_dir`` (run config ``cfg``, eval
    mode) over the second half of ``episodes`` walker_stand episodes, and their returns."""
    import torch

    from envs import make
    from utils.runner import build_agent
    from utils.snapshot import load_snapshot

    torch.manual_seed(seed)  # acting samples the latent state
    env = make("walker_stand", "states", cfg.action_repeat, seed=seed)
    first = env.reset()
    assert abs(first["observation"][HEIGHT_INDEX] - env.physics.torso_height()) < 1e-4, "walker observation layout"
    agent = build_agent(cfg, env.obs_shape, env.action_dim, torch.device("cpu"))
    agent.finetune_mode()
    agent.load_snapshot_state(load_snapshot(run_dir / "finetuned_snapshot.pt")["agent"])
    heights, uprights, returns = [], [], []
    for _ in range(episodes):
        time_step, state, total, trace = env.reset(), None, 0.0, []
        meta = agent.init_meta()
        while not time_step["is_last"]:
            # A step past num_init_frames: the meta-controller picks the skills, as in the eval of the run.
            action, state = agent.act(time_step, meta, 10**9, True, state)
            time_step = env.step(action)
            total += float(time_step["reward"])
            trace.append((env.physics.torso_height(), env.physics.torso_upright()))
        second_half = np.array(trace[len(trace) // 2:])
        heights.append(second_half[:, 0].mean())
        uprights.append(second_half[:, 1].mean())
        returns.append(total)
    env.close()
    return {"episodes": episodes, "torso_height": round(float(np.mean(heights)), 3),
            "torso_upright": round(float(np.mean(uprights)), 3), "returns": [round(r, 1) for r in returns]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-frames", type=int, default=20000)
    parser.add_argument("--finetune-frames", type=int, default=30000)
    parser.add_argument("--eval-every", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--random-episodes", type=int, default=20,
                        help="episodes of the random policy measured as the baseline")
    parser.add_argument("--posture-episodes", type=int, default=5,
                        help="episodes of the fine-tuned policy whose torso posture is reported")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--configs", default="dmc_states_ar2", choices=("dmc_states", "dmc_states_ar2"),
                        help="observation config (action repeat 2 or 1)")
    parser.add_argument("--train-every", type=int, default=5,
                        help="fine-tuning: an update every this many frames (train_every_actions)")
    parser.add_argument("--out", default=str(REPO / "bench" / "learning"))
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for both scripts")
    parser.add_argument("--finetune-extra", nargs="*", default=[], help="more overrides for finetune.py only")
    parser.add_argument("--report-only", action="store_true",
                        help="no training: report, plot and diagnose the runs already in --out")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    pretrain_dir, finetune_dir = out / "pretrain_run", out / "finetune_run"
    walls = {}
    if args.report_only:
        if not (finetune_dir / ".hydra" / "config.yaml").exists():
            sys.exit(f"--report-only: no fine-tuning run in {finetune_dir} (.hydra/config.yaml missing); "
                     "run without --report-only first")
        if (out / "learning.json").exists():
            previous = json.loads((out / "learning.json").read_text())
            walls = {key: previous[key] for key in ("pretrain_wall_s", "finetune_wall_s") if key in previous}
    else:
        out.mkdir(parents=True, exist_ok=True)
        common = [f"configs={args.configs}", "agent=choreo", "preset=cpu", f"seed={args.seed}", *args.extra]
        walls["pretrain_wall_s"] = round(run("pretrain.py", common + [
            "domain=walker", f"num_train_frames={args.pretrain_frames}", f"snapshots=[{args.pretrain_frames}]",
            f"hydra.run.dir={pretrain_dir}"], cwd=out), 1)
        walls["finetune_wall_s"] = round(run("finetune.py", common + [
            "task=walker_stand", f"snapshot_ts={args.pretrain_frames}", f"num_train_frames={args.finetune_frames + 10}",
            f"eval_every_frames={args.eval_every}", f"num_eval_episodes={args.eval_episodes}",
            f"train_every_actions={args.train_every}", f"hydra.run.dir={finetune_dir}", *args.finetune_extra],
            cwd=out), 1)
    report(args, out, pretrain_dir, finetune_dir, walls)


def report(args: argparse.Namespace, out: Path, pretrain_dir: Path, finetune_dir: Path, walls: dict) -> None:
    """Random baseline, eval curve, posture and torso coverage of the runs in ``out``: printed, in
    ``learning.json`` and drawn in ``learning.png``."""
    from omegaconf import OmegaConf

    # What the run did comes from its own config, so --report-only needs none of the run's flags.
    cfg = OmegaConf.load(finetune_dir / ".hydra" / "config.yaml")
    pretrain_frames, finetune_frames = int(cfg.snapshot_ts), int(cfg.num_train_frames) // 1000 * 1000
    random_episode_returns, _ = random_returns("walker_stand", cfg.action_repeat, args.random_episodes,
                                               seed=1000 + cfg.seed)
    random_mean, random_std = float(np.mean(random_episode_returns)), float(np.std(random_episode_returns))
    evals = read_csv(finetune_dir / "eval.csv")
    curve = [(int(row["frame"]), row["episode_reward"]) for row in evals]
    held = posture(cfg, finetune_dir, args.posture_episodes, seed=2000 + cfg.seed) \
        if (finetune_dir / "finetuned_snapshot.pt").exists() else {}
    coverage = {name: torso_coverage(run_dir / "buffer") for name, run_dir in
                (("pretraining", pretrain_dir), ("fine-tuning", finetune_dir))}
    result = {
        "pretrain_frames": pretrain_frames, "finetune_frames": finetune_frames,
        "action_repeat": int(cfg.action_repeat), "train_every": int(cfg.train_every_actions),
        "finetune_overrides": list(OmegaConf.load(finetune_dir / ".hydra" / "overrides.yaml")),
        "random_return": round(random_mean, 1), "random_return_std": round(random_std, 1), **walls,
        "pretrain_episode_returns": [row["episode_reward"] for row in read_csv(pretrain_dir / "train.csv")],
        "finetune_eval_curve": curve,
        "finetune_train_returns": [(int(row["frame"]), row["episode_reward"])
                                   for row in read_csv(finetune_dir / "train.csv")],
        "posture": held, "torso_coverage": coverage,
    }
    (out / "learning.json").write_text(json.dumps(result, indent=1))

    print(f"random policy on walker_stand: {random_mean:.1f} +- {random_std:.1f} ({args.random_episodes} episodes)")
    if walls:
        print(f"pre-training {pretrain_frames} frames: {walls['pretrain_wall_s'] / 60:.1f} min; "
              f"fine-tuning {finetune_frames} frames: {walls['finetune_wall_s'] / 60:.1f} min")
    for frame, value in curve:
        print(f"  walker_stand eval at {frame:>6} fine-tuning frames: {value:8.1f} ({value / random_mean:.2f}x random)")
    if held:
        print(f"fine-tuned policy, second half of {held['episodes']} episodes: torso at {held['torso_height']:.2f} m "
              f"(full reward from 1.2 m), upright {held['torso_upright']:.2f}; returns {held['returns']}")
    for name, share in coverage.items():
        if share:
            print(f"{name} data past the initial drop: torso above 0.9 m in {share['share_above_0.9']:.1%} of "
                  f"{share['steps']} steps (mean height {share['mean_height']:.2f} m)")
    plot(out, pretrain_frames, curve, result["finetune_train_returns"], random_mean, random_std)


def plot(out: Path, pretrain_frames: int, curve: list, train_curve: list, random_mean: float,
         random_std: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train_curve:
        ax.plot(*zip(*train_curve), color="tab:blue", alpha=0.35, linewidth=1, label="training episodes (sampled)")
    if curve:
        ax.plot(*zip(*curve), color="tab:blue", marker="o", label="fine-tuned (eval, mean action)")
    ax.axhspan(random_mean - random_std, random_mean + random_std, color="grey", alpha=0.3,
               label=f"random policy ({random_mean:.0f} +- {random_std:.0f})")
    ax.axhline(3 * random_mean, color="black", linestyle="--", linewidth=1,
               label=f"target: 3x random ({3 * random_mean:.0f})")
    ax.set_xlabel("fine-tuning frames")
    ax.set_ylabel("walker_stand return")
    ax.set_title(f"walker: pre-train {pretrain_frames // 1000}k frames (CPU preset), fine-tune stand")
    top = max([3 * random_mean] + [value for _, value in curve + train_curve])
    ax.set_ylim(0, 1.1 * top)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "learning.png", dpi=120)
    print(f"wrote {out / 'learning.png'}")


if __name__ == "__main__":
    main()
