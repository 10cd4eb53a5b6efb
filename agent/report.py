"""Open-loop prediction videos of the world model and the skill module (docs/algorithm.md §10.8).

``openloop_video(agent, batch)`` returns one uint8 video (T, 3, 3*H, N*W) whose rows are

1. the ground truth: the batch's frames, unchanged;
2. the open-loop prediction: posterior reconstructions for the first ``context`` steps, then the
   prior rolled forward with the replayed actions (``rssm.imagine_actions``), decoded;
3. (agents whose ``skill_reconstruction`` gives one: Choreographer) the skill reconstruction: the
   same posterior reconstructions for ``context`` steps, then each imagined deterministic state
   passed through the VQ encoder, snapped to its nearest code and decoded by the VQ decoder; stoch
   is sampled from the prior head given that deter, and the resulting feature is decoded.

and whose N columns are the first N sequences of the batch. Pixels only.
"""
from __future__ import annotations

import numpy as np
import torch

from agent.world_model import preprocess_obs

VIDEO_FPS = 15


@torch.no_grad()
def openloop_video(agent, batch: dict[str, torch.Tensor], context: int = 5, sequences: int = 8) -> np.ndarray:
    wm = agent.wm
    observation = batch["observation"]
    if observation.dtype != torch.uint8 or observation.dim() != 5:
        raise ValueError("open-loop videos need pixel observations (uint8 (B, T, 3, H, W)); "
                         f"got {observation.dtype} of shape {tuple(observation.shape)}")
    count, steps = min(sequences, observation.shape[0]), observation.shape[1]
    if not 0 < context < steps:
        raise ValueError(f"context={context} must be at least 1 and less than the batch length {steps}")
    device = next(wm.parameters()).device
    truth = observation[:count].to(device)
    action = batch["action"][:count].to(device).float()
    is_first = batch["is_first"][:count].to(device)
    rssm = wm.rssm

    with _autocast(agent):
        embed = wm.encoder(preprocess_obs(truth[:, :context]))
        post, _ = rssm.observe(embed, action[:, :context], is_first[:, :context])
        recon = wm.decoder(rssm.feat(post)).mode()
        last = {key: value[:, -1] for key, value in post.items()}
        prior = rssm.imagine_actions(action[:, context:], last)
        openloop = wm.decoder(rssm.feat(prior)).mode()
        # Agents without a skill bottleneck (the baselines, DIAYN, APS) have no skill row.
        rebuilt = agent.skill_reconstruction(prior["deter"])
        skill = wm.decoder(rssm.feat(rebuilt)).mode() if rebuilt is not None else None

    model = torch.cat([recon, openloop], 1)
    rows = [truth, _to_uint8(model)]  # each (N, T, 3, H, W)
    if skill is not None:
        rows.append(_to_uint8(torch.cat([recon, skill], 1)))
    video = torch.cat(rows, 3)  # (N, T, 3, rows x H, W)
    video = torch.cat(video.unbind(0), 3)  # (T, 3, rows x H, N*W)
    return video.cpu().numpy()


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Decoder means in [-0.5, 0.5] -> uint8 in [0, 255]."""
    return ((image.float() + 0.5).clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8)


def _autocast(agent):
    autocast = getattr(agent, "autocast", None)
    if autocast is None:
        import contextlib
        return contextlib.nullcontext()
    return autocast()


def log_openloop_video(logger, agent, batch: dict[str, torch.Tensor], frame: int, key: str = "observation",
                       context: int = 5, sequences: int = 8) -> np.ndarray:
    """Write the open-loop video to the logger's TensorBoard (tag ``train/openl_<key>``, x = frame,
    15 fps) and wandb run (a GIF) where they are on; returns the video."""
    from utils.video import log_video_tb, log_video_wandb
    context = max(1, min(context, batch["observation"].shape[1] - 1))  # short batches: fewer context steps
    video = openloop_video(agent, batch, context, sequences)
    tag = f"train/openl_{key}"
    if getattr(logger, "tb", None) is not None:
        log_video_tb(logger.tb, tag, video, frame, fps=VIDEO_FPS)
    if getattr(logger, "wandb", None) is not None:
        log_video_wandb(logger.wandb, tag, video, fps=VIDEO_FPS)
    return video
