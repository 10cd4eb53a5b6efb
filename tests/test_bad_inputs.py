"""Bad input of every kind (config values, snapshot files, dataset folders and files, Meta-World goal
files) ends in ONE line naming the bad value or file and what is allowed: one table, one test.

Each case goes through the code a script runs (the runner's start-up, the fine-tuning snapshot load,
the dataset reader) up to the exception the scripts print as ``error: <message>`` (see
``utils.errors.exit_with_one_line``); nothing trains. ``{tmp}`` in overrides and expected texts is the
case's folder, which is also the working directory (so relative paths are tested as users give them).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import envs
from conftest import REPO, TINY, compose_config
from utils import exorl
from utils.errors import UserError
from utils.runner import OnlineRunner, build_agent, plain
from utils.settings import preflight
from utils.snapshot import SnapshotError, save_snapshot

# What finetune.py's OnlineRunner start-up and exit_with_one_line turn into one line.
ONE_LINE_ERRORS = (UserError, SnapshotError)
GOAL = [0.0, 0.6, 0.02, 0.1, 0.8, 0.2]
LAYOUT = "[obj_x, obj_y, obj_z, goal_x, goal_y, goal_z]"
SNAPSHOT = "{tmp}/snaps/1/snapshot_100.pt"


# ----------------------------------------------------------------------------------- writers
def goals(text_or_content):
    """Writes goals.json in the case folder: a str as it is, anything else as JSON."""
    def write(tmp):
        text = text_or_content if isinstance(text_or_content, str) else json.dumps(text_or_content)
        (tmp / "goals.json").write_text(text)
    return write


def goal_sets(*sizes):
    return {"goal_sets": {str(k): [GOAL] * size for k, size in enumerate(sizes)}}


def snapshot(payload_or_writer):
    """Writes <tmp>/snaps/1/snapshot_100.pt: a payload with save_snapshot, or via a function of the path."""
    def write(tmp):
        path = tmp / "snaps" / "1" / "snapshot_100.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(payload_or_writer):
            payload_or_writer(path)
        else:
            save_snapshot(payload_or_writer, path)
    return write


def _truncated(path):
    save_snapshot({"agent": {"modules": {"w": torch.zeros(100)}}, "obs_type": "states", "domain": "walker"}, path)
    path.write_bytes(path.read_bytes()[:40])


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def _other_sizes(path):
    """A real pre-training snapshot of an agent with a smaller RSSM than the run's config."""
    agent = build_agent(compose_config(TINY + ["rssm.deter=16"]), (24,), 6, torch.device("cpu"))
    save_snapshot({"agent": agent.snapshot_state(), "obs_type": "states", "domain": "walker"}, path)


def run_checkpoint(*extra, phase="pretrain", keep_config=True):
    """Writes <tmp>/run/checkpoint.pt: a real agent's checkpoint made under TINY + ``extra``."""
    def write(tmp):
        cfg = compose_config(TINY + list(extra))
        agent = build_agent(cfg, (24,), 6, torch.device("cpu"))
        payload = {"agent": agent.snapshot_state(), "phase": phase, "obs_type": "states", "domain": "walker"}
        if keep_config:
            payload["config"] = plain(cfg)
        save_snapshot(payload, tmp / "run" / "checkpoint.pt")
    return write


def _named_snapshot(path, name):
    """A real choreo agent's snapshot that says another agent made it."""
    agent = build_agent(compose_config(TINY), (24,), 6, torch.device("cpu"))
    state = dict(agent.snapshot_state(), name=name)
    save_snapshot({"agent": state, "obs_type": "states", "domain": "walker"}, path)


def _other_snapshot_only(tmp):
    save_snapshot({"agent": {}, "obs_type": "states", "domain": "walker"}, tmp / "snaps" / "1" / "snapshot_300.pt")


def episode_file(name="episode_0_40.npz", rows=41, obs_dim=24, drop=(), **replace):
    """Writes <tmp>/buffer/<name>: a walker-shaped episode of zeros, with keys dropped or replaced."""
    def write(tmp):
        arrays = {"observation": np.zeros((rows, obs_dim), np.float32), "action": np.zeros((rows, 6), np.float32),
                  "reward": np.zeros((rows, 1), np.float32), "discount": np.ones((rows, 1), np.float32)}
        arrays.update(replace)
        for key in drop:
            del arrays[key]
        (tmp / "buffer").mkdir(exist_ok=True)
        np.savez_compressed(tmp / "buffer" / name, **arrays)
    return write


def _truncated_episode(tmp):
    episode_file()(tmp)
    path = tmp / "buffer" / "episode_0_40.npz"
    path.write_bytes(path.read_bytes()[:200])


def _not_a_zip(tmp):
    (tmp / "buffer").mkdir()
    (tmp / "buffer" / "episode_0_40.npz").write_text("not a zip file")


def _empty_folder(tmp):
    (tmp / "buffer").mkdir()
    (tmp / "buffer" / "README.txt").write_text("no episodes here")


# A finished tiny pre-training run (2 episodes, checkpoint at the end), made once per session for the
# cases about a run folder's own episode files; a case copies it into its folder and damages it.
FINISHED_RUN = ["configs=dmc_states", "num_train_frames=2000", "num_seed_frames=1000", "snapshots=[]",
                "checkpoint_every_min=0", "threads=1", "use_tb=false"]
_finished_run_dir = []


def finished_run(damage):
    def write(tmp):
        import shutil
        import tempfile
        if not _finished_run_dir:
            run_dir = tempfile.mkdtemp(prefix="finished_run_") + "/run"
            subprocess.run([sys.executable, str(REPO / "pretrain.py"), *TINY, *FINISHED_RUN, f"hydra.run.dir={run_dir}"],
                           cwd=str(REPO), check=True, capture_output=True, timeout=600)
            _finished_run_dir.append(run_dir)
        shutil.copytree(_finished_run_dir[0], tmp / "run")
        first, second = sorted((tmp / "run" / "buffer").glob("*.npz"))
        damage(first, second)
    return write


def _truncate(path, _other):
    path.write_bytes(path.read_bytes()[:300])


def _text(path, _other):
    path.write_text("not an episode")


def _remove(_path, other):
    other.unlink()


def _rename(path, _other):
    path.rename(path.with_name("episode.npz"))


# ------------------------------------------------------------------------------------- table
def case(kind, name, expected, write=None, overrides=(), marks=()):
    return pytest.param(kind, write, list(overrides), list(expected), id=f"{kind}-{name}", marks=marks)


CASES = [
    # -- config values (the finetune config, as finetune.py composes it)
    case("config", "unknown domain", ["unknown domain 'cheetah' in task 'cheetah_run'",
                                      "valid domains: walker, quadruped, jaco, mw"], overrides=["task=cheetah_run"]),
    case("config", "precision", ["precision=8 is not supported", "valid: 32, 16"], overrides=["precision=8"]),
    case("config", "low_memory", ["low_memory='yes' is not valid", "valid: true, false"],
         overrides=["low_memory=yes"]),
    case("config", "cuda_graphs", ["cuda_graphs='on' is not valid", "valid: true, false"],
         overrides=["cuda_graphs=on"]),
    case("config", "compile", ["compile='yes' is not valid", "valid: auto, true, false"],
         overrides=["compile=yes"]),
    case("config", "prefetch_batches", ["prefetch_batches='sometimes' is not valid", "valid: auto, true, false"],
         overrides=["prefetch_batches=sometimes"]),
    case("config", "mw action repeat", ["bad action_repeat 3 for mw_reach", "valid action repeats: 1, 2"],
         overrides=["task=mw_reach", "action_repeat=3"]),
    case("config", "mw seed", ["bad seed 10 for mw_reach", "valid seeds: 0..9"],
         overrides=["task=mw_reach", "seed=10"]),
    case("config", "goals_file for walker", ["goals_file='{tmp}/goals.json'", "Meta-World tasks (mw_reach) only",
                                             "walker_stand has fixed goals", "goals_file=null"],
         write=goals(goal_sets(2, 2)), overrides=["task=walker_stand", "goals_file=goals.json"]),
    # -- fine-tuning snapshots (custom_snap_dir={tmp}/snaps, seed=1, snapshot_ts=100)
    case("checkpoint", "other network sizes", ["{tmp}/run/checkpoint.pt was made with other settings",
                                                "rssm.deter: 16 -> 32", "another hydra.run.dir"],
         write=run_checkpoint("rssm.deter=16")),
    case("checkpoint", "other seed and batch", ["batch_size: 8 -> 4", "seed: 2 -> 1", "rerun with the checkpoint's"],
         write=run_checkpoint("seed=2", "batch_size=8")),
    case("checkpoint", "other sizes, no config saved", ["{tmp}/run/checkpoint.pt does not fit this run's agent",
                                                        "another hydra.run.dir"],
         write=run_checkpoint("rssm.deter=16", keep_config=False)),
    case("checkpoint", "other phase", ["the checkpoint in {tmp}/run is from finetune, not pretrain"],
         write=run_checkpoint(phase="finetune")),
    case("checkpoint", "truncated", ["checkpoint {tmp}/run/checkpoint.pt is corrupt or truncated"],
         write=lambda tmp: (tmp / "run").mkdir() or (tmp / "run" / "checkpoint.pt").write_bytes(b"PK\x03\x04junk")),
    case("config", "agent key the agent does not take", ["agent.skil_dim is not a setting of agent=choreo",
                                                         "its settings: ", "skill_dim"],
         overrides=["+agent.skil_dim=4"]),
    case("config", "agent key missing", ["agent=choreo needs agent.knn_k", "configs/agent/choreo.yaml"],
         overrides=["~agent.knn_k"]),
    case("snapshot", "another agent's", [SNAPSHOT, "is of agent=lbs", "agent=choreo cannot start from it"],
         write=snapshot(lambda path: _named_snapshot(path, "lbs"))),
    case("snapshot", "missing", [f"snapshot not found: {SNAPSHOT}", "snapshot_ts values there: 300",
                                 "snapshot_ts=0 trains from scratch"], write=_other_snapshot_only),
    case("snapshot", "truncated", [f"snapshot {SNAPSHOT} is corrupt or truncated"], write=snapshot(_truncated)),
    case("snapshot", "empty file", [SNAPSHOT, "corrupt or truncated"],
         write=snapshot(lambda path: path.write_bytes(b""))),
    case("snapshot", "text file", [SNAPSHOT, "corrupt or truncated"],
         write=snapshot(lambda path: path.write_text("hello, this is not a snapshot\n"))),
    case("snapshot", "pickled code", [f"refusing to load {SNAPSHOT}", "tensors and plain containers"],
         write=snapshot(lambda path: torch.save({"agent": _Payload()}, path))),
    case("snapshot", "not a dict", [f"snapshot {SNAPSHOT} does not hold a dict"],
         write=snapshot(lambda path: torch.save([1, 2, 3], path))),
    case("snapshot", "pixels snapshot", [SNAPSHOT, "pre-trained with obs_type='pixels'",
                                         "this run has obs_type='states'"],
         write=snapshot({"agent": {"modules": {}}, "obs_type": "pixels", "domain": "walker"})),
    case("snapshot", "other domain", [SNAPSHOT, "pre-trained with domain='jaco'", "this run has domain='walker'"],
         write=snapshot({"agent": {"modules": {}}, "obs_type": "states", "domain": "jaco"})),
    case("snapshot", "no agent weights", [SNAPSHOT, "agent"],
         write=snapshot({"obs_type": "states", "domain": "walker"})),
    case("snapshot", "other network sizes", ["the snapshot's networks differ from this config's", "snapshot (",
                                             "use the sizes it was pre-trained with"], write=snapshot(_other_sizes)),
    # -- datasets ({tmp}/buffer read for walker_stand)
    case("dataset", "missing folder", ["dataset folder {tmp}/buffer does not exist", "<prefix>_<index>_<length>.npz",
                                       "dataset_dir="]),
    case("dataset", "empty folder", ["dataset folder {tmp}/buffer holds no episode files (*.npz)"],
         write=_empty_folder),
    case("dataset", "not a zip", ["{tmp}/buffer/episode_0_40.npz cannot be read: corrupt or truncated",
                                  "on_bad_file=skip"], write=_not_a_zip),
    case("dataset", "truncated npz", ["{tmp}/buffer/episode_0_40.npz cannot be read: corrupt or truncated"],
         write=_truncated_episode),
    case("dataset", "pickled array", ["episode_0_40.npz cannot be read", "allow_pickle=False"],
         write=episode_file(reward=np.array([[None]] * 41, dtype=object))),
    case("dataset", "missing key", ["episode_0_40.npz lacks the key(s) discount",
                                    "an episode file holds observation, action, reward, discount"],
         write=episode_file(drop=["discount"])),
    case("dataset", "other domain", ["episode_0_40.npz: 'observation' has shape (41, 39)",
                                     "walker_stand environment expects (41, 24)"], write=episode_file(obs_dim=39)),
    case("dataset", "misnamed file", ["episode.npz", "<prefix>_<index>_<length>.npz"],
         write=episode_file(name="episode.npz")),
    # -- the command line, before Hydra runs (utils.settings.preflight; pretrain.py's config)
    case("command", "misspelt key", ["num_train_frmes is not a setting of this script",
                                     "did you mean num_train_frames?"], overrides=["num_train_frmes=3000"]),
    case("command", "misspelt nested key", ["model_opt.lrr is not a setting", "did you mean model_opt.lr?"],
         overrides=["model_opt.lrr=3e-4"]),
    case("command", "unknown configs", ["configs=nonexistent names no file configs/configs/nonexistent.yaml",
                                        "valid: dmc_pixels, dmc_states"], overrides=["configs=nonexistent"]),
    case("command", "unknown agent", ["agent=nonexistent names no file configs/agent/nonexistent.yaml",
                                      "valid: aps, apt, choreo, diayn, dreamer"], overrides=["agent=nonexistent"]),
    case("command", "unknown preset", ["preset=huge names no file configs/preset/huge.yaml", "valid: cpu, full"],
         overrides=["preset=huge"]),
    case("command", "word for a number", ["model_opt.lr='fast' must be a number", "its default: 0.0003"],
         overrides=["model_opt.lr=fast"]),
    case("command", "word for a seed", ["seed='abc' must be a number"], overrides=["seed=abc"]),
    case("command", "number for a switch", ["use_tb=1 must be true or false"], overrides=["use_tb=1"]),
    # -- pre-training values (pretrain.py's config)
    case("pretrain", "seed", ["seed=-1 must be a non-negative integer"], overrides=["seed=-1"]),
    case("pretrain", "snapshots", ["snapshots=['abc'] must list positive frame counts"],
         overrides=["snapshots=[abc]"]),
    case("pretrain", "snapshots not a list", ["snapshots=5 must be a list of frame counts"],
         overrides=["snapshots=5"]),
    case("pretrain", "goal_skill", ["goal_skill='farthest' is not valid", "valid: nearest, imagine, none"],
         overrides=["goal_skill=farthest"]),
    case("pretrain", "progress", ["progress='maybe' is not valid", "valid: auto, true, false"],
         overrides=["progress=maybe"]),
    case("pretrain", "replay capacity", ["replay.capacity=0 must be a positive integer"],
         overrides=["replay.capacity=0"]),
    case("pretrain", "eval_goals on walker", ["eval_goals=True evaluates goal reaching",
                                              "walker_stand has no goals", "valid on the jaco, mw domains"],
         overrides=["eval_goals=True"]),
    case("pretrain", "on_bad_file", ["on_bad_file='ignore' is not valid", "valid: stop, skip"],
         overrides=["on_bad_file=ignore"]),
    case("pretrain", "agent needs rewards", ["agent=dreamer learns from the task reward",
                                             "run finetune.py agent=dreamer"], overrides=["agent=dreamer"]),
    case("config", "snapshot_agent the agent does not take", ["snapshot_agent=dreamer is not taken by agent=choreo",
                                                              "leave snapshot_agent unset"],
         overrides=["snapshot_agent=dreamer"]),
    case("config", "snapshot_ts", ["snapshot_ts=-5 must be a frame count >= 0"], overrides=["snapshot_ts=-5"]),
    # -- a resumed run's own episode files ({tmp}/run: a finished run copied, one file damaged)
    case("buffer", "truncated episode", ["{tmp}/run/buffer/", "_000000_1000.npz cannot be read: corrupt or truncated",
                                         "on_bad_file=skip resumes without"], write=finished_run(_truncate)),
    case("buffer", "text for an episode", ["_000000_1000.npz cannot be read: corrupt or truncated"],
         write=finished_run(_text)),
    case("buffer", "missing episode", ["replay folder {tmp}/run/buffer lacks episode(s) 1 of the 2 the checkpoint "
                                       "expects", "on_bad_file=skip"], write=finished_run(_remove)),
    case("buffer", "misnamed episode", ["episode.npz: file name does not follow <prefix>_<index>_<length>.npz"],
         write=finished_run(_rename)),
    # -- Meta-World goal files (task=mw_reach goals_file=goals.json, relative to the case folder)
    case("goals", "missing", ["goals file {tmp}/goals.json not found", 'expected JSON {"goal_sets": {"0": [' + LAYOUT,
                              "goals_file=null uses the shipped mw_reach_harder_goals.json"]),
    case("goals", "a folder", ["goals file {tmp}/goals.json is not a file"],
         write=lambda tmp: (tmp / "goals.json").mkdir()),
    case("goals", "not JSON", ["goals file {tmp}/goals.json is not valid JSON", "at line 3 column 1",
                               'expected JSON {"goal_sets"'],
         write=goals('{"goal_sets": {\n "0": [[1, 2, 3, 4, 5, 6]],\n}')),
    case("goals", "top-level list", ['{tmp}/goals.json has no "goal_sets" object at the top (found a JSON list)'],
         write=goals([[GOAL]])),
    case("goals", "no goal_sets key", ['{tmp}/goals.json has no "goal_sets" object at the top (found keys \'goals\')'],
         write=goals({"goals": {"0": [GOAL]}})),
    case("goals", "goal_sets a list", ['{tmp}/goals.json: "goal_sets" is [[', 'expected a non-empty object {"0": ['],
         write=goals({"goal_sets": [[GOAL]]})),
    case("goals", "short goal", ['{tmp}/goals.json: goal_sets["1"][2] is [1, 2, 3, 4, 5]',
                                 "expected a list of 6 numbers " + LAYOUT],
         write=goals({"goal_sets": {"0": [GOAL] * 3, "1": [GOAL, GOAL, [1, 2, 3, 4, 5]]}})),
    case("goals", "string in goal", ['goal_sets["0"][0] is [0.0, 0.6, 0.02, 0.1, 0.8, "0.2"]', "6 numbers"],
         write=goals({"goal_sets": {"0": [GOAL[:5] + ["0.2"]]}})),
    case("goals", "NaN", ['{tmp}/goals.json: goal_sets["0"][1] is [0.0, 0.6, NaN', "expected finite numbers"],
         write=goals({"goal_sets": {"0": [GOAL, GOAL[:2] + [float("nan")] + GOAL[3:]]}})),
    case("goals", "sets of two sizes", ['{tmp}/goals.json: goal_sets["0"] holds 3 goals but goal_sets["1"] holds 2',
                                        "every goal set to hold the same number"], write=goals(goal_sets(3, 2))),
    case("goals", "gap in set keys", ["goal set key(s) '2' do not fit", 'expected the keys "0".."1"'],
         write=goals({"goal_sets": {"0": [GOAL], "2": [GOAL]}})),
    case("goals", "seed without a set", ["bad seed 2 for mw_reach", "valid seeds: 0..1",
                                         "one goal set each in goals file {tmp}/goals.json"],
         write=goals(goal_sets(3, 3)), overrides=["seed=2"]),
    case("goals", "task_id past the set", ["bad task_id 3 for mw_reach", "valid task ids: 0..2 or None",
                                           "goals file {tmp}/goals.json"],
         write=goals(goal_sets(3, 3)), overrides=["seed=1", "task_id=3"]),
]


@pytest.fixture(scope="module")
def walker_env():
    env = envs.make("walker_stand", "states", 1, 0)
    yield env
    env.close()


@pytest.mark.parametrize("kind, write, overrides, expected", CASES)
def test_bad_input_gives_one_line_naming_it(tmp_path, monkeypatch, capsys, request, kind, write, overrides, expected):
    monkeypatch.chdir(tmp_path)
    if write is not None:
        write(tmp_path)
    fill = lambda text: text.replace("{tmp}", str(tmp_path))  # noqa: E731
    overrides, expected = [fill(o) for o in overrides], [fill(e) for e in expected]
    with pytest.raises(ONE_LINE_ERRORS) as error:
        if kind == "command":
            with pytest.raises(SystemExit) as exited:
                preflight("pretrain", overrides)
            assert str(exited.value.code).startswith("error: ")
            raise UserError(str(exited.value.code)[len("error: "):])
        elif kind == "pretrain":  # another agent= takes none of choreo's agent.* sizes in TINY
            other_agent = any(o.startswith("agent=") for o in overrides)
            tiny = [o for o in TINY if not (other_agent and o.startswith("agent."))]
            OnlineRunner(compose_config(tiny + overrides), tmp_path / "run")
        elif kind == "buffer":
            OnlineRunner(compose_config(TINY + FINISHED_RUN + overrides), tmp_path / "run")
        elif kind == "config":
            OnlineRunner(compose_config(TINY + overrides, "finetune"), tmp_path / "run", phase="finetune")
        elif kind == "goals":
            cfg = compose_config(TINY + ["task=mw_reach", "goals_file=goals.json", *overrides], "finetune")
            OnlineRunner(cfg, tmp_path / "run", phase="finetune")
        elif kind == "snapshot":
            cfg = compose_config(TINY + [f"custom_snap_dir={tmp_path / 'snaps'}", "seed=1", "snapshot_ts=100",
                                         "task=walker_stand", *overrides], "finetune")
            OnlineRunner(cfg, tmp_path / "run", phase="finetune")
        elif kind == "checkpoint":  # a rerun of pre-training in a run folder that holds this checkpoint
            OnlineRunner(compose_config(TINY + overrides), tmp_path / "run")
        elif kind == "dataset":
            exorl.load_dataset(tmp_path / "buffer", request.getfixturevalue("walker_env"), task="walker_stand",
                               progress=False)
    message = str(error.value)
    assert "\n" not in message, message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    assert "this must never run" not in capsys.readouterr().out


def test_table_spans_all_kinds_with_enough_cases():
    kinds = [param.values[0] for param in CASES]
    assert {"config", "snapshot", "dataset", "goals", "checkpoint", "command", "pretrain", "buffer"} <= set(kinds)
    assert len(kinds) >= 15 and all(kinds.count(kind) >= 3 for kind in set(kinds))


def test_finetune_script_prints_one_error_line_for_a_bad_goals_file(tmp_path):
    """End to end: a relative goals_file is read from where the command runs, and a bad one is one line."""
    (tmp_path / "my_goals.json").write_text(json.dumps({"goal_sets": {"0": [GOAL, GOAL[:5]]}}))
    command = [sys.executable, str(REPO / "finetune.py"), *TINY, "configs=dmc_states", "task=mw_reach", "seed=0",
               "goals_file=my_goals.json", f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f'error: goals file {tmp_path / "my_goals.json"}: goal_sets["0"][1] is {json.dumps(GOAL[:5])}; '
        f"expected a list of 6 numbers {LAYOUT}"], result.stderr


def test_a_valid_goals_file_is_used_for_the_run_seed_and_its_size(tmp_path, monkeypatch):
    """A good custom file (relative path): the seed's set gives the env's goals, and an evaluation
    without task_id covers every goal of the set once."""
    sets = {"goal_sets": {"0": [GOAL] * 2, "1": [[0.0, 0.6, 0.02, -0.1, 0.75, 0.15], GOAL]}}
    (tmp_path / "goals.json").write_text(json.dumps(sets))
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(TINY + ["task=mw_reach", "goals_file=goals.json", "seed=1", "snapshot_ts=0"], "finetune")
    runner = OnlineRunner(cfg, tmp_path / "run", phase="finetune")
    try:
        assert runner.eval_env.num_goals == 2 and runner.eval_episodes() == [0, 1]
        runner.eval_env.reset(task_id=0)
        np.testing.assert_allclose(runner.eval_env.goal_position, sets["goal_sets"]["1"][0][3:])
    finally:
        runner.train_env.close()
        runner.eval_env.close()
        runner.logger.close()


def test_skip_resumes_without_a_damaged_episode_of_the_runs_own_buffer(tmp_path, capsys):
    finished_run(_truncate)(tmp_path)
    runner = OnlineRunner(compose_config(TINY + FINISHED_RUN + ["on_bad_file=skip"]), tmp_path / "run")
    try:
        assert len(runner.replay.episodes) == 1 and runner.replay.episodes_written == 2
        assert "cannot be read: corrupt or truncated" in capsys.readouterr().out
    finally:
        runner.train_env.close()
        runner.eval_env.close()
        runner.logger.close()


@pytest.mark.parametrize("script, argument, expected", [
    ("pretrain.py", "num_train_frmes=3000", "error: num_train_frmes is not a setting of this script; did you mean "
                                            "num_train_frames?"),
    ("finetune.py", "agent=nonexistent", "error: agent=nonexistent names no file configs/agent/nonexistent.yaml"),
    ("offline_train.py", "model_opt.lr=fast", "error: model_opt.lr='fast' must be a number"),
    ("pretrain.py", "goal_skill=farthest", "error: goal_skill='farthest' is not valid; valid: nearest, imagine, none"),
])
def test_scripts_print_one_line_for_a_bad_command_and_leave_no_run_folder(tmp_path, script, argument, expected):
    run_dir = tmp_path / "exp" / "run"
    result = subprocess.run([sys.executable, str(REPO / script), argument, f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(expected), line
    assert not run_dir.exists() and not (tmp_path / "exp").exists()
