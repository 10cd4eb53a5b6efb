"""Roll out the skills of a pre-training snapshot and write them as one GIF grid and a PNG contact sheet.

    python visualize_skills.py snapshot=PATH [task=walker_stand] [skills=N] [steps=100] [out=DIR] [seed=1]

Every skill (or the N most used ones, ranked by the VQ codebook's usage ``cluster_size``) is executed
by the skill actor's mean action on concat(feature, one-hot skill) from a fresh episode of ``task``
(default: the snapshot's task; any task of the snapshot's domain works). Frames are rendered from
the physics state, so snapshots trained on states work too. Output, in ``out`` (default
``./skill_videos``):

* ``skills_<task>.gif``: one 64x64 tile per skill, ``steps`` frames, tiles row by row in skill order;
* ``skills_<task>.png``: a contact sheet, one row per skill (labelled with its index), ``frames``
  frames evenly spaced over the rollout.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from utils.errors import UserError

USAGE = ("usage: python visualize_skills.py snapshot=PATH [task=TASK] [skills=N] [steps=100] [out=DIR] "
         "[seed=1] [fps=20] [frames=8] [device=auto]")
DEFAULTS = {"snapshot": None, "task": None, "skills": None, "steps": 100, "out": "./skill_videos", "seed": 1,
            "fps": 20, "frames": 8, "device": "auto"}
INTEGER_KEYS = ("skills", "steps", "seed", "fps", "frames")


def parse_args(argv: list[str]) -> dict:
    """``key=value`` arguments as Hydra users type them (``--key=value`` and ``--key value`` work too)."""
    args, items = dict(DEFAULTS), list(argv)
    while items:
        item = items.pop(0)
        if item in ("-h", "--help"):
            print(__doc__.strip() + "\n\n" + USAGE)
            raise SystemExit(0)
        key, sep, value = item.lstrip("-").partition("=")
        if not sep:
            if item.startswith("--") and items:
                value = items.pop(0)
            else:
                raise UserError(f"argument '{item}' is not key=value; {USAGE}")
        key = key.lstrip("+")
        if key not in DEFAULTS:
            raise UserError(f"unknown argument '{key}'; valid: {', '.join(DEFAULTS)}")
        if key in INTEGER_KEYS and value not in ("null", "None", "all"):
            try:
                value = int(value)
            except ValueError:
                raise UserError(f"{key}={value!r} must be an integer") from None
            if value <= 0:
                raise UserError(f"{key}={value} must be positive")
        elif value in ("null", "None", "all"):
            value = None
        args[key] = value
    if not args["snapshot"]:
        raise UserError(f"snapshot=PATH is required; {USAGE}")
    return args


def load_agent(snapshot_path: str, task: str | None, seed: int, device_name: str):
    """The snapshot's agent (weights loaded, eval only) and an environment of ``task``."""
    if not Path(snapshot_path).expanduser().is_file():  # before the slow imports
        raise UserError(f"snapshot not found: {Path(snapshot_path).expanduser()}")
    import torch

    import envs
    from utils.agents import agent_from_snapshot, read_snapshot
    from utils.device import resolve_device

    path = Path(snapshot_path).expanduser()
    payload = read_snapshot(path, "a pre-training snapshot")
    cfg = payload["config"]
    task = task or payload.get("task") or cfg.get("task")
    if not task:
        raise UserError("the snapshot names no task; give one with task=TASK")
    try:
        domain = envs.domain_of(task)
    except ValueError as error:
        raise UserError(str(error)) from error
    snapshot_domain = payload.get("domain") or cfg.get("domain")
    if snapshot_domain and domain != snapshot_domain:
        raise UserError(f"task '{task}' is of domain {domain}, but the snapshot was pre-trained on "
                        f"{snapshot_domain}; valid tasks: {', '.join(envs.TASKS[snapshot_domain])}")
    try:
        device = resolve_device(device_name)
    except ValueError as error:
        raise UserError(str(error)) from error
    obs_type, action_repeat = payload["obs_type"], int(payload["action_repeat"])

    def attempt(exorl: bool):
        env = envs.make(task, obs_type, action_repeat, seed, exorl=exorl)
        return env, agent_from_snapshot(payload, path, env.obs_shape, env.action_dim, device, seed=seed)

    try:
        env, agent = attempt(exorl=False)
    except UserError as error:  # networks of another size: Jaco states from ExORL data have 42 dims
        if domain != "jaco" or obs_type != "states":
            raise UserError(f"snapshot {path} does not fit task {task} ({obs_type}): {error}") from error
        env, agent = attempt(exorl=True)
    if not agent.has_skills:
        raise UserError(f"snapshot {path} is of agent={agent.name}, which has no skills to show; "
                        f"visualize_skills.py shows the skills of agents with skills (choreo, diayn, aps)")
    agent.eval()
    torch.manual_seed(seed)
    return agent, env, task, obs_type


def select_skills(agent, count: int | None) -> list[int]:
    """All skills in index order, or the ``count`` most used (``agent.skill_usage()``: choreo's VQ
    ``cluster_size``), most used first; the first ``count`` where the method counts no usage."""
    usage = agent.skill_usage()
    total = agent.skill_count
    if count is None or count >= total:
        return list(range(total))
    if usage is None:
        return list(range(count))
    return [int(i) for i in np.argsort(-usage, kind="stable")[:count]]


def rollout_skill(agent, env, skill: int, steps: int, pixels: bool) -> np.ndarray:
    """``steps`` frames (steps, 3, H, W) of the skill actor's mean behaviour from a fresh episode;
    frame t is what the agent saw when choosing its t-th action."""
    import torch
    one_hot = torch.zeros(1, agent.skill_count, device=agent.device)
    one_hot[0, skill] = 1.0
    frames = []
    time_step, state = env.reset(), None
    for _ in range(steps):
        frames.append(time_step["observation"] if pixels else env.render_physics(env.physics_state()))
        with torch.no_grad():
            latent, feat = agent.observe(time_step, state)
            action = agent.skill_policy(feat, one_hot).mode()
        state = (latent, action)
        time_step = env.step(action[0].cpu().numpy())
        if time_step["is_last"]:
            time_step, state = env.reset(), None
    return np.stack(frames).astype(np.uint8)


def contact_sheet(videos: np.ndarray, skills: list[int], frames: int) -> np.ndarray:
    """(3, S*H, label + F*W): one row per skill, ``frames`` evenly spaced frames, index on the left."""
    import cv2
    count, steps, _, height, width = videos.shape
    picks = np.unique(np.linspace(0, steps - 1, min(frames, steps)).round().astype(int))
    label_width = 28
    rows = []
    for video, skill in zip(videos, skills):
        label = np.zeros((height, label_width, 3), np.uint8)
        cv2.putText(label, str(skill), (2, height // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
        strip = np.concatenate([video[t].transpose(1, 2, 0) for t in picks], axis=1)
        rows.append(np.concatenate([label, strip], axis=1))
    return np.concatenate(rows, axis=0).transpose(2, 0, 1)


def main(argv: list[str] | None = None) -> list[Path]:
    from utils.video import tile_videos, write_image, write_video

    args = parse_args(sys.argv[1:] if argv is None else argv)
    agent, env, task, obs_type = load_agent(args["snapshot"], args["task"], args["seed"], args["device"])
    skills = select_skills(agent, args["skills"])
    try:
        videos = np.stack([rollout_skill(agent, env, skill, args["steps"], obs_type == "pixels") for skill in skills])
    finally:
        env.close()
    out = Path(args["out"]).expanduser()
    try:
        gif = write_video(out / f"skills_{task}.gif", tile_videos(videos), fps=args["fps"])
        png = write_image(out / f"skills_{task}.png", contact_sheet(videos, skills, args["frames"]))
    except OSError as error:
        raise UserError(f"could not write to {out}: {error.strerror or error}") from error
    print(f"skills {', '.join(map(str, skills))}: {args['steps']} steps each on {task}")
    print(f"wrote {gif}")
    print(f"wrote {png}")
    return [gif, png]


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
