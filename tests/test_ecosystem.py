"""Ecosystem: videos, open-loop reports, skill GIFs, plots and tables, progress bar, sweeps, wandb."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY, batch_from_rollout, compose_config, walker_rollout

PRETRAIN = [sys.executable, str(REPO / "pretrain.py")]
TINY_RUN = ["preset=cpu", "batch_size=4", "batch_length=16", "imag_starts=32", "snapshots=[]"]


def gif_frames(path) -> tuple[int, tuple[int, int], list[int]]:
    """(frame count, (width, height), per-frame durations in ms) of a GIF file or bytes."""
    image = Image.open(io.BytesIO(path) if isinstance(path, bytes) else path)
    durations = []
    for index in range(image.n_frames):
        image.seek(index)
        durations.append(image.info["duration"])
    return image.n_frames, image.size, durations


# --------------------------------------------------------------------------------------- videos
def test_video_recorder_writes_gif_atomically_and_falls_back_from_mp4(tmp_path, monkeypatch, capsys):
    from utils import video
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)
    recorder = video.VideoRecorder(tmp_path / "eval_video", fps=20)
    recorder.init(enabled=False)
    recorder.record(frames[0])
    assert recorder.save("skip.gif") is None and not (tmp_path / "eval_video").exists()
    recorder.init(enabled=True)
    for frame in frames:
        recorder.record(frame)
    path = recorder.save("1000.gif")
    assert path == tmp_path / "eval_video" / "1000.gif"
    count, size, durations = gif_frames(path)
    assert (count, size, durations) == (6, (16, 16), [50] * 6)
    decoded = np.asarray(Image.open(path).convert("RGB"))
    assert np.abs(decoded.astype(int) - frames[0].transpose(1, 2, 0)).mean() < 40  # palette quantisation only
    assert sorted(p.name for p in path.parent.iterdir()) == ["1000.gif"]  # no temporary file left

    monkeypatch.setattr(video, "has_ffmpeg", lambda: False)
    monkeypatch.setattr(video, "_warned_no_ffmpeg", False)
    written = video.write_video(tmp_path / "ep.mp4", frames, fps=10)
    assert written == tmp_path / "ep.gif" and gif_frames(written)[0] == 6
    video.write_video(tmp_path / "ep2.mp4", frames, fps=10)
    assert capsys.readouterr().err.count("imageio-ffmpeg is not installed") == 1


def test_tile_videos_places_each_video_in_its_cell():
    from utils.video import tile_videos
    videos = np.zeros((3, 2, 3, 4, 5), np.uint8)
    for i in range(3):
        videos[i] = i + 1
    grid = tile_videos(videos)  # 3 tiles -> 2 x 2, the last cell empty
    assert grid.shape == (2, 3, 8, 10)
    assert (grid[:, :, :4, :5] == 1).all() and (grid[:, :, :4, 5:] == 2).all()
    assert (grid[:, :, 4:, :5] == 3).all() and (grid[:, :, 4:, 5:] == 0).all()


def test_log_video_tb_writes_an_animated_gif_summary(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from utils.video import log_video_tb
    frames = torch.randint(0, 256, (5, 3, 12, 20), dtype=torch.uint8)
    writer = SummaryWriter(str(tmp_path / "tb"))
    log_video_tb(writer, "train/openl_observation", frames, step=4000, fps=15)
    writer.close()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["train/openl_observation"]
    (event,) = events.Images("train/openl_observation")
    assert (event.step, event.width, event.height) == (4000, 20, 12)
    count, size, _ = gif_frames(event.encoded_image_string)
    assert event.encoded_image_string.startswith(b"GIF89a") and count == 5 and size == (20, 12)


def test_short_pixel_run_writes_openloop_summary_and_eval_video(tmp_path):
    """A pixel pre-training run: one 500-step episode, then an evaluation at frame 1000 (recorded)
    and open-loop reports every 20 frames once updates run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_dir = tmp_path / "run"
    result = subprocess.run(PRETRAIN + TINY + TINY_RUN + [
        "configs=dmc_pixels", "num_train_frames=1040", "num_seed_frames=1000", "eval_every_frames=1000",
        "num_eval_episodes=1", "save_video=true", "recon_every_frames=20", "use_wandb=false",
        f"hydra.run.dir={run_dir}"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (video,) = (run_dir / "eval_video").iterdir()
    count, size, durations = gif_frames(video)
    assert size == (64, 64)
    # 501 frames (reset + 500 steps) at 20 fps; identical consecutive frames are merged into one.
    assert sum(durations) == pytest.approx(501 * 50, abs=50) and count > 100
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    events.Reload()
    reports = events.Images("train/openl_observation")
    assert [event.step for event in reports] == [1000, 1020]
    assert (reports[0].height, reports[0].width) == (3 * 64, 4 * 64)  # 3 rows x batch_size sequences


# ------------------------------------------------------------------------------------- report
def test_openloop_video_rows_and_shape(tiny_config):
    from agent.report import openloop_video
    from utils.runner import build_agent
    torch.manual_seed(0)
    cfg = tiny_config("configs=dmc_pixels")
    agent = build_agent(cfg, (3, 64, 64), 6, torch.device("cpu"))
    batch = batch_from_rollout(walker_rollout("pixels", 20), batch_size=2, length=10)
    video = openloop_video(agent, batch, context=5, sequences=8)
    assert video.shape == (10, 3, 3 * 64, 2 * 64) and video.dtype == np.uint8
    for n in range(2):
        truth = video[:, :, :64, n * 64:(n + 1) * 64]
        assert np.array_equal(truth, batch["observation"][n].numpy())
    model, skill = video[:, :, 64:128], video[:, :, 128:]
    assert np.array_equal(model[:5], skill[:5])  # both rows show the posterior recon for the context
    assert not np.array_equal(model[5:], skill[5:])  # then the VQ bottleneck changes the prediction
    with pytest.raises(ValueError, match="pixel"):
        openloop_video(agent, {**batch, "observation": torch.zeros(2, 10, 24)})


def test_openloop_skill_row_is_the_vq_reconstruction_of_the_imagined_states(tiny_config):
    """docs/algorithm.md §10.8 (videos): row 3 = posterior recon for the 5 context steps, then each
    imagined deter passed through VQ encoder -> nearest code -> VQ decoder, stoch sampled from the
    prior head given that reconstructed deter, decoded. Recomputed here step by step under the same
    seed."""
    from agent.report import openloop_video
    from models.distributions import OneHotCategorical
    from utils.runner import build_agent
    torch.manual_seed(0)
    agent = build_agent(tiny_config("configs=dmc_pixels"), (3, 64, 64), 6, torch.device("cpu"))
    wm, rssm, vq = agent.wm, agent.wm.rssm, agent.skill_module
    # One code per quadrant, far from the encoder's outputs: the imagined states snap to different
    # codes, and snapping moves them a lot. A louder decoder makes latent differences visible in uint8.
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[-1.0, 1.0, -1.0, 1.0], [-1.0, -1.0, 1.0, 1.0]]) * 3.0)
        wm.decoder.project.weight.mul_(3.0)
        wm.decoder.net[-1].weight.mul_(10.0)
    batch = batch_from_rollout(walker_rollout("pixels", 20), batch_size=2, length=10)
    context, size = 5, 64
    torch.manual_seed(1)
    video = openloop_video(agent, batch, context=context, sequences=2)
    row = lambda r: np.stack([video[:, :, r * size:(r + 1) * size, n * size:(n + 1) * size] for n in range(2)])
    model, skill = row(1), row(2)  # each (N, T, 3, H, W)

    def expected(quantise: bool = True, resample: bool = True) -> tuple[np.ndarray, torch.Tensor]:
        """(N, T, 3, H, W) uint8 frames of the skill row, and the code index of each imagined step."""
        torch.manual_seed(1)  # the same random draws as openloop_video: posterior, prior, then skill stoch
        with torch.no_grad():
            obs = batch["observation"].float() / 255.0 - 0.5
            action, is_first = batch["action"].float(), batch["is_first"]
            post, _ = rssm.observe(wm.encoder(obs[:, :context]), action[:, :context], is_first[:, :context])
            prior = rssm.imagine_actions(action[:, context:], {key: value[:, -1] for key, value in post.items()})
            z_e = vq.encoder(prior["deter"]).mean  # (N, T - context, code_dim)
            codes = vq.codebook.t()  # (K, code_dim)
            index = torch.cdist(z_e.reshape(-1, codes.shape[1]), codes).argmin(-1).reshape(z_e.shape[:-1])
            deter = vq.decoder(codes[index] if quantise else z_e).mean
            logit = rssm.prior_out(deter).reshape(*deter.shape[:-1], rssm.stoch, rssm.discrete)
            stoch = OneHotCategorical(logit).sample() if resample else prior["stoch"]
            imagined = wm.decoder(torch.cat([stoch.flatten(-2), deter], -1)).mode()
            recon = wm.decoder(torch.cat([post["stoch"].flatten(-2), post["deter"]], -1)).mode()
            frames = torch.cat([recon, imagined], 1)
        return ((frames + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy(), index

    want, index = expected()
    assert len(index.unique()) > 1  # the check covers more than one code
    assert np.abs(skill.astype(int) - want).max() <= 1  # uint8 rounding only
    assert np.array_equal(skill[:, :context], model[:, :context])  # context steps: the posterior recon
    # Controls, each far from the row: the open-loop prediction, the VQ autoencoder without the
    # quantisation, and the imagined stoch kept instead of resampled from the reconstructed deter.
    for control in (model, expected(quantise=False)[0], expected(resample=False)[0]):
        assert np.abs(skill[:, context:].astype(int) - control[:, context:]).mean() > 5


# ---------------------------------------------------------------------------------- skill GIFs
@pytest.fixture(scope="module")
def tiny_snapshot(tmp_path_factory):
    from utils.runner import build_agent, plain
    from utils.snapshot import save_snapshot
    cfg = compose_config(TINY + ["configs=dmc_states"])
    agent = build_agent(cfg, (24,), 6, torch.device("cpu"))
    agent.skill_module.cluster_size.copy_(torch.tensor([1.0, 5.0, 3.0, 0.0]))
    path = tmp_path_factory.mktemp("snapshot") / "snapshot_0.pt"
    save_snapshot({"agent": agent.snapshot_state(), "config": plain(cfg), "obs_type": "states", "domain": "walker",
                   "task": "walker_stand", "action_repeat": 1, "global_frame": 0}, path)
    return path


def test_visualize_skills_writes_one_tile_per_skill(tiny_snapshot, tmp_path):
    steps = 6
    result = subprocess.run([sys.executable, str(REPO / "visualize_skills.py"), f"snapshot={tiny_snapshot}",
                             "task=walker_walk", f"steps={steps}", f"out={tmp_path}", "frames=3"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    count, size, durations = gif_frames(tmp_path / "skills_walker_walk.gif")
    assert size == (2 * 64, 2 * 64)  # 4 skills -> 2 x 2 tiles of 64 x 64
    assert count == steps and durations == [50] * steps
    sheet = Image.open(tmp_path / "skills_walker_walk.png")
    assert sheet.size == (28 + 3 * 64, 4 * 64)  # label column + 3 frames, one row per skill

    # skills=2 picks the two most used codes (cluster_size 5 and 3) in that order.
    from visualize_skills import load_agent, select_skills
    agent, env, task, _ = load_agent(str(tiny_snapshot), None, 1, "cpu")
    env.close()
    assert task == "walker_stand" and select_skills(agent, 2) == [1, 2] and select_skills(agent, None) == [0, 1, 2, 3]


@pytest.mark.parametrize("args, message", [
    (["snapshot=/nonexistent/snapshot.pt"], "error: snapshot not found: /nonexistent/snapshot.pt"),
    (["task=walker_jump"], "error: unknown task 'walker_jump'"),
    (["task=quadruped_walk"], "error: task 'quadruped_walk' is of domain quadruped"),
])
def test_visualize_skills_errors_are_one_line(tiny_snapshot, tmp_path, args, message):
    if not args[0].startswith("snapshot="):
        args = [f"snapshot={tiny_snapshot}"] + args
    result = subprocess.run([sys.executable, str(REPO / "visualize_skills.py"), *args, f"out={tmp_path}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert not list(tmp_path.glob("*.gif"))


# --------------------------------------------------------------------------------------- plots
def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["episode,episode_reward,frame,step"] + [f"{i},{reward},{frame},{frame}"
                                                     for i, (frame, reward) in enumerate(rows, 1)]
    path.write_text("\n".join(lines) + "\n")


def test_plot_writes_png_and_normalised_table(tmp_path):
    # walker_stand (expert 984): final returns 492 and 984 -> 0.5, 1.0
    write_csv(tmp_path / "runs" / "a" / "eval.csv", [(1000, 100), (2000, 492)])
    write_csv(tmp_path / "runs" / "b" / "eval.csv", [(1000, 200), (2000, 984)])
    # walker_run (expert 796), task and seed from the run's Hydra config: 199 -> 0.25, 597 -> 0.75
    for seed, reward in ((1, 199), (2, 597)):
        run = tmp_path / "sweep" / str(seed - 1)
        write_csv(run / "eval.csv", [(1000, 0), (2000, reward)])
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(f"task: walker_run\nseed: {seed}\nagent:\n  name: choreo\n")
    out = tmp_path / "plots"
    result = subprocess.run([sys.executable, str(REPO / "plot.py"), str(tmp_path / "runs" / "a" / "eval.csv"),
                             str(tmp_path / "runs" / "b" / "eval.csv"), str(tmp_path / "sweep" / "*"),
                             "--task", "walker_stand", "--out", str(out), "--resamples", "500"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    png = Image.open(out / "eval_curves.png")
    assert png.format == "PNG" and png.size[0] > 400  # two panels side by side
    table = (out / "eval_results.md").read_text()
    assert table in result.stdout
    assert "| choreo | walker_stand | 2 | 738.0 ± 246.0 | 984 | 0.750 ± 0.250 |" in table
    assert "| choreo | walker_run | 2 | 398.0 ± 199.0 | 796 | 0.500 ± 0.250 |" in table
    # mean of task means (0.75, 0.5) = 0.625 = median of two; IQM of {0.25, 0.5, 0.75, 1.0} = mean(0.5, 0.75)
    aggregate = next(line for line in table.splitlines() if line.startswith("| choreo | 2 | 4 |"))
    cells = [cell.strip() for cell in aggregate.strip("|").split("|")]
    assert [cell.split(" [")[0] for cell in cells[3:]] == ["0.625", "0.625", "0.625"]
    low, high = (float(v) for v in cells[3].split("[")[1].rstrip("]").split(","))
    assert 0.375 <= low < 0.625 < high <= 0.875  # bounds of the bootstrap: each task's seed range


def test_plot_skips_the_logs_a_restarted_run_set_aside(tmp_path):
    from plot import find_csvs
    write_csv(tmp_path / "runs" / "a" / "eval.csv", [(1000, 100)])
    write_csv(tmp_path / "runs" / "a" / "interrupted" / "20261130T120000" / "eval.csv", [(1000, 5)])
    write_csv(tmp_path / "runs" / "b" / "eval.csv", [(1000, 200)])
    found = find_csvs([str(tmp_path / "runs")], "eval.csv")
    assert [path.parent.name for path in found] == ["a", "b"]
    aside = tmp_path / "runs" / "a" / "interrupted" / "20261130T120000"
    assert find_csvs([str(aside)], "eval.csv") == [(aside / "eval.csv").resolve()]  # still plotted when named


def test_plot_aggregates_match_hand_computation():
    """plot.py's aggregates come from utils/scoring.py (rliable): checked here on a hand-worked case."""
    from utils.scoring import aggregate_one, point_estimates
    scores = [np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 1.0, 1.0, 1.0])]
    point = point_estimates(scores, ("mean", "median", "iqm"))
    assert point["mean"] == pytest.approx((0.25 + 1.0) / 2)
    assert point["median"] == pytest.approx((0.25 + 1.0) / 2)
    assert point["iqm"] == pytest.approx(np.mean([0.3, 0.4, 1.0, 1.0]))  # 8 scores, 2 dropped at each end
    assert point_estimates([np.array([5.0, 1.0, 3.0])], ("iqm",))["iqm"] == pytest.approx(3.0)
    interval = aggregate_one(scores, 2000, 0, ("mean",))["mean"]
    assert interval.low < point["mean"] < interval.high
    flat = aggregate_one([np.array([0.5, 0.5])], 100, 0, ("iqm",))["iqm"]
    assert (flat.low, flat.high) == (0.5, 0.5)


# ------------------------------------------------------------------------------------ progress
def test_progress_bar_writes_lines_above_itself_and_stays_off_without_terminal(capsys):
    from utils.progress import Progress
    stream = io.StringIO()
    bar = Progress(2000, unit="frame", desc="train", enabled=True, file=stream)
    bar.update(500)
    bar.write("| train | F: 500 |")
    bar.set(1000)
    bar.close()
    text = stream.getvalue()
    assert "| train | F: 500 |\n" in text and "train:" in text and "1.00k/2.00k frames" in text
    off = Progress(2000)  # pytest captures stdout: not a terminal
    assert not off.enabled
    off.update(100)
    off.write("plain line")
    off.close()
    assert capsys.readouterr().out == "plain line\n"


# ------------------------------------------------------------------------------ sweeps, wandb
def test_local_multirun_writes_one_run_folder_per_job(tmp_path):
    command = PRETRAIN + ["-m", "seed=1,2", *TINY_RUN, "num_train_frames=200", "num_seed_frames=200"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "exp_sweep").glob("*/??????_??????_choreo_pt")  # pretrain.yaml's hydra.sweep.dir
    for job, seed in ((0, 1), (1, 2)):
        run = sweep / str(job)
        assert (run / "pretrain.log").is_file() and (run / "tb").is_dir()
        assert f"seed: {seed}\n" in (run / ".hydra" / "config.yaml").read_text()


@pytest.mark.parametrize("script, run_name, sweep_name", [
    ("pretrain", "choreo", "choreo_pt"), ("finetune", "choreo_ft", "choreo_ft"),
    ("offline_train", "choreo", "choreo_pt"), ("collect", "collect", "collect"),
])
def test_back_to_back_launches_get_their_own_run_and_sweep_folders(script, run_name, sweep_name):
    """Run and sweep folders are named to the microsecond, so two launches of one experiment in the
    same second (to the minute, the original's sweep folders were shared) never share a folder.
    Each launch composes its config afresh, as composing twice here does."""
    import re

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        first, second = (compose(script, return_hydra_config=True).hydra for _ in range(2))
    stamp = r"\d{4}\.\d\d\.\d\d/\d{6}_\d{6}"
    for hydra in (first, second):
        assert re.fullmatch(rf"\./exp_local/{stamp}_{run_name}", hydra.run.dir), hydra.run.dir
        assert re.fullmatch(rf"\./exp_sweep/{stamp}_{sweep_name}", hydra.sweep.dir), hydra.sweep.dir
        assert OmegaConf.to_container(hydra.sweep)["subdir"] == "${hydra.job.num}"  # one folder per job
    assert first.run.dir != second.run.dir and first.sweep.dir != second.sweep.dir


@pytest.mark.parametrize("launcher", ["submitit_slurm", "choreo_slurm"])
def test_slurm_launcher_config_composes_without_a_cluster(tmp_path, launcher):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result = subprocess.run(PRETRAIN + [f"hydra/launcher={launcher}", "--cfg", "hydra"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    launcher = result.stdout.split("\n  launcher:\n", 1)[1].split("\n  sweeper:", 1)[0]
    for line in ("timeout_min: 4300", "cpus_per_task: 10", "gpus_per_node: 1", "mem_gb: 160",
                 "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"):
        assert f"    {line}\n" in launcher + "\n", launcher
    default = subprocess.run(PRETRAIN + ["--cfg", "hydra"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "basic_launcher.BasicLauncher" in default.stdout


def test_wandb_offline_writes_its_run_into_the_run_folder(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"), WANDB_DATA_DIR=str(tmp_path / "wandb_data"))
    run_dir = tmp_path / "run"
    # 1001 frames: the first episode ends at frame 1000, so one train line reaches wandb.
    command = PRETRAIN + [*TINY_RUN, "num_train_frames=1001", "num_seed_frames=1001", "use_wandb=true",
                          f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (records,) = offline.glob("run-*.wandb")
    data = records.read_bytes()
    assert b"train/episode_reward" in data and b"choreo_pretrain" in data
