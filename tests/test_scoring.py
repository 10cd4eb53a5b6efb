"""utils/scoring.py: expected values worked out by hand, intervals checked for properties that can fail."""
import csv

import numpy as np
import pytest

from utils import scoring

REPS = 2000


# ------------------------------------------------------------------------------ normalisation
def test_normalised_divides_by_the_urlb_expert_score():
    assert scoring.normalised([492, 984], "walker_stand") == pytest.approx([0.5, 1.0])  # 984
    assert scoring.normalised([111.5], "jaco_reach_top_right") == pytest.approx([0.5])  # 223
    assert scoring.normalised(444, "quadruped_walk") == pytest.approx(444 / 866)
    with pytest.raises(KeyError, match="mw_reach"):
        scoring.normalised([1.0], "mw_reach")


def test_expert_table_is_the_urlb_one():
    expected = {"walker": (984, 971, 796, 799), "quadruped": (866, 888, 920, 888), "jaco": (191, 223, 193, 203)}
    tasks = {"walker": ("stand", "walk", "run", "flip"), "quadruped": ("walk", "run", "stand", "jump"),
             "jaco": ("reach_top_left", "reach_top_right", "reach_bottom_left", "reach_bottom_right")}
    table = {f"{d}_{t}": float(s) for d in expected for t, s in zip(tasks[d], expected[d])}
    assert scoring.EXPERT_SCORES == table


# -------------------------------------------------------------------------- point estimates
def test_aggregates_of_a_small_matrix_by_hand():
    # 4 runs x 2 tasks. Task means 0.25 and 1.375: mean 0.8125, median (two tasks) 0.8125.
    # IQM: the 8 scores sorted 0.1 0.2 | 0.3 0.4 1 1 | 1.5 2, the 2 lowest and 2 highest dropped: 0.675.
    # Optimality gap: scores clipped at 1 sum to 0.1+0.2+0.3+0.4 + 4 = 5, 1 - 5/8 = 0.375.
    scores = np.array([[0.1, 1.5], [0.2, 1.0], [0.3, 1.0], [0.4, 2.0]])
    result = scoring.aggregate({"a": scores}, reps=200)["a"]
    assert result["mean"].point == pytest.approx(0.8125)
    assert result["median"].point == pytest.approx(0.8125)
    assert result["iqm"].point == pytest.approx(0.675)
    assert result["optimality_gap"].point == pytest.approx(0.375)
    assert all(estimate.runs == 8 for estimate in result.values())


def test_iqm_drops_a_quarter_rounded_down_at_each_end():
    # 10 scores (5 runs x 2 tasks): floor(10 / 4) = 2 dropped at each end: 0 0 | 0 0 0 1 2 3 | 10 100 -> 1.0
    scores = np.array([0, 0, 0, 0, 0, 1, 2, 3, 10, 100], float).reshape(5, 2)
    assert scoring.aggregate_one(scores, reps=100, metrics=("iqm",))["iqm"].point == pytest.approx(1.0)


def test_tasks_with_different_run_counts():
    # task a: 0.2 0.4 (mean 0.3); task b: 0.6 0.8 1.0 (mean 0.8): mean = median = 0.55.
    # IQM over the 5 pooled runs: floor(5/4) = 1 dropped at each end -> 0.4 0.6 0.8 -> 0.6.
    # Optimality gap: 1 - mean(0.2 0.4 0.6 0.8 1.0) = 0.4.
    result = scoring.aggregate_one({"a": [0.2, 0.4], "b": [0.6, 0.8, 1.0]}, reps=REPS)
    assert [result[name].point for name in scoring.METRICS] == pytest.approx([0.55, 0.55, 0.6, 0.4])
    assert result["mean"].runs == 5
    for estimate in result.values():
        assert estimate.low <= estimate.point <= estimate.high
    # The mean's bootstrap stays within the means of each task's lowest and highest run.
    assert (0.2 + 0.6) / 2 <= result["mean"].low < result["mean"].high <= (0.4 + 1.0) / 2


# ----------------------------------------------------------------- probability of improvement
def test_probability_of_improvement_counts_pairs():
    # x 3 5 7 against y 1 5 6: pairs x > y: 3>1; 5>1; 7>1, 7>5, 7>6 = 5, one tie (5, 5) counts 1/2 -> 5.5 / 9
    assert scoring.probability_of_improvement([[3, 5, 7]], [[1, 5, 6]], reps=200).point == pytest.approx(5.5 / 9)
    # Unequal run counts: x 1 2 against y 0 1 3: 1>0, tie 1=1, 2>0, 2>1 -> 3.5 / 6
    assert scoring.probability_of_improvement([[1, 2]], [[0, 1, 3]], reps=200).point == pytest.approx(3.5 / 6)
    # Averaged over tasks (matched by name; y's extra task is ignored): (5.5/9 + 0) / 2
    x = {"t1": [3, 5, 7], "t2": [0, 1]}
    y = {"t1": [1, 5, 6], "t2": [2, 3], "t3": [0]}
    both = scoring.probability_of_improvement(x, y, reps=REPS)
    assert both.point == pytest.approx(5.5 / 9 / 2)
    assert 0 <= both.low <= both.point <= both.high <= 1
    # P(x > y) + P(y > x) = 1
    assert scoring.probability_of_improvement(y, x, reps=200).point == pytest.approx(1 - both.point)


def test_probability_of_improvement_refuses_unmatched_tasks():
    with pytest.raises(ValueError, match="share no task"):
        scoring.probability_of_improvement({"a": [1.0]}, {"b": [1.0]})
    with pytest.raises(ValueError, match="tasks"):
        scoring.probability_of_improvement(np.ones((3, 2)), np.ones((3, 3)))


# -------------------------------------------------------------------------------- intervals
def test_mean_interval_equals_the_exact_bootstrap_percentiles():
    # Two tasks of two runs: a 0.5 1.0, b 0.25 0.75. A resampled task mean is its low run, the midpoint
    # or its high run with probability 1/4, 1/2, 1/4, so the mean of the two task means is 0.375 with
    # probability 1/16 > 2.5% and 0.875 with 1/16: the 95% percentile interval is [0.375, 0.875].
    mean = scoring.aggregate_one({"a": [0.5, 1.0], "b": [0.25, 0.75]}, reps=REPS)["mean"]
    assert (mean.point, mean.low, mean.high) == pytest.approx((0.625, 0.375, 0.875))


def test_intervals_contain_the_point_estimate():
    rng = np.random.default_rng(3)
    scores = rng.gamma(2.0, 0.3, size=(7, 5))
    for estimate in scoring.aggregate_one(scores, reps=REPS).values():
        assert estimate.low <= estimate.point <= estimate.high
        assert estimate.low < estimate.high


def test_intervals_narrow_with_more_runs():
    rng = np.random.default_rng(0)
    few, many = rng.normal(0.5, 0.2, size=(5, 4)), rng.normal(0.5, 0.2, size=(80, 4))
    narrow, wide = scoring.aggregate_one(many, reps=REPS), scoring.aggregate_one(few, reps=REPS)
    for name in scoring.METRICS:
        assert narrow[name].high - narrow[name].low < 0.6 * (wide[name].high - wide[name].low), name


def test_intervals_are_deterministic_under_a_fixed_seed_and_leave_the_global_generator_alone():
    scores = np.random.default_rng(1).uniform(size=(6, 3))
    np.random.seed(123)
    expected_draw = np.random.rand()
    np.random.seed(123)
    first = scoring.aggregate_one(scores, reps=500, seed=7)
    assert np.random.rand() == expected_draw  # the caller's stream is where it was
    np.random.rand(50)  # a different global state must not change the result
    assert scoring.aggregate_one(scores, reps=500, seed=7) == first
    other = scoring.aggregate_one(scores, reps=500, seed=8)
    assert other["mean"].point == first["mean"].point and other["mean"].low != first["mean"].low


def test_constant_scores_give_a_point_interval():
    result = scoring.aggregate_one({"a": [0.5, 0.5], "b": [0.5, 0.5, 0.5]}, reps=100)
    for name in ("mean", "median", "iqm"):
        assert (result[name].low, result[name].point, result[name].high) == pytest.approx((0.5, 0.5, 0.5))


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="at least one run"):
        scoring.aggregate_one({"a": []})
    with pytest.raises(ValueError, match="finite"):
        scoring.aggregate_one({"a": [1.0, float("nan")]})
    with pytest.raises(ValueError, match="unknown metric"):
        scoring.aggregate_one({"a": [1.0]}, metrics=("max",))


# ------------------------------------------------------------------------ profiles and curves
def test_performance_profile_by_hand():
    # Runs x tasks 0.2 0.6 / 0.4 1.0: share of the four scores above 0, 0.3, 0.5, 1.0 = 1, 3/4, 1/2, 0
    profile, low, high = scoring.performance_profile({"a": np.array([[0.2, 0.6], [0.4, 1.0]])},
                                                     [0.0, 0.3, 0.5, 1.0], reps=REPS)["a"]
    assert profile == pytest.approx([1.0, 0.75, 0.5, 0.0])
    assert np.all(low <= profile) and np.all(profile <= high)
    assert low[0] == high[0] == 1.0 and low[-1] == high[-1] == 0.0


def test_learning_curve_by_hand():
    # One task, 4 runs, 2 evaluations: IQM of 0 1 2 10 drops one at each end -> 1.5; constant 5 -> 5.
    curves = {"t": np.array([[0, 5], [1, 5], [2, 5], [10, 5]], float)}
    point, low, high = scoring.learning_curve(curves, "iqm", reps=REPS)
    assert point == pytest.approx([1.5, 5.0])
    assert low[0] <= 1.5 <= high[0] and (low[1], high[1]) == pytest.approx((5.0, 5.0))
    with pytest.raises(ValueError, match="same evaluations"):
        scoring.learning_curve({"a": np.ones((2, 3)), "b": np.ones((2, 2))})


def test_figures_are_written(tmp_path):
    rng = np.random.default_rng(0)
    scores = {"choreo": {"walker_stand": rng.uniform(size=3), "walker_run": rng.uniform(size=2)},
              "lbs": rng.uniform(size=(3, 2))}
    profile = scoring.performance_profile_figure(scores, tmp_path / "profile.png", reps=100)
    curves = {"choreo": ([1000, 2000, 3000], {"walker_stand": rng.uniform(size=(3, 3))}),
              "lbs": ([1000, 2000], [rng.uniform(size=(2, 2)), rng.uniform(size=(3, 2))])}
    curve = scoring.learning_curve_figure(curves, tmp_path / "curve.png", reps=100)
    for path in (profile, curve):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------- tables
def test_success_table_rates_with_intervals():
    rates = {("choreo", "jaco_reach_top_left"): {"success_rate": [0.1, 0.3, 0.2], "goal_success_rate": [0.5, 0.6, 0.7]},
             ("choreo", "mw_reach goal set 0"): {"success_rate": [0.4]}}
    text, cells = scoring.success_table(rates, reps=REPS)
    lines = text.splitlines()
    assert lines[0] == "| method | task | seeds | success_rate [95% CI] | goal_success_rate [95% CI] |"
    jaco = next(line for line in lines if "jaco" in line)
    assert jaco.startswith("| choreo | jaco_reach_top_left | 3 | 0.200 [")
    assert "| choreo | mw_reach goal set 0 | 1 | 0.400 [0.400, 0.400] (n=1) | - |" in lines
    success = next(c for c in cells if c["group"] == "jaco_reach_top_left" and c["metric"] == "success_rate")
    assert success["value"] == pytest.approx(0.2) and 0.1 <= success["low"] <= 0.2 <= success["high"] <= 0.3
    assert len(cells) == 3


def test_score_tables_and_results_files(tmp_path):
    raw = {("choreo", "walker_stand"): [492, 984], ("choreo", "walker_run"): [199, 597],
           ("choreo", "quadruped_walk"): [433, 866], ("choreo", "mw_reach"): [1, 2],
           ("lbs", "walker_stand"): [246, 492], ("lbs", "walker_run"): [199, 199]}
    markdown, cells = scoring.score_tables(raw, reps=500)
    assert "| choreo | walker_stand | 2 | 738.0 ± 246.0 | 984 | 0.750 ± 0.250 |" in markdown
    assert "| choreo | mw_reach | 2 | 1.5 ± 0.5 | - | - |" in markdown
    # choreo over 3 tasks: task means 0.75, 0.5, 0.75 -> mean 2/3, median 0.75; 6 runs
    row = next(line for line in markdown.splitlines() if line.startswith("| choreo | 3 | 6 |"))
    assert row.split("|")[4].strip().startswith("0.667 [") and row.split("|")[5].strip().startswith("0.750 [")
    # lbs: walker_stand 0.25 0.5, walker_run 0.25 0.25 -> optimality gap 1 - 1.25/4 = 0.6875;
    # P(choreo > lbs): walker_stand {0.5, 1} vs {0.25, 0.5}: 3.5/4; walker_run {0.25, 0.75} vs {0.25, 0.25}: 3/4
    lbs = next(line for line in markdown.splitlines() if line.startswith("| lbs | 0.688 ["))
    assert lbs.split("|")[3].strip().startswith(f"{(3.5 / 4 + 3 / 4) / 2:.3f} [")
    assert "| choreo | quadruped | 1 | 2 |" in markdown and "| choreo | walker | 2 | 4 |" in markdown  # per domain
    md, table = scoring.write_results(markdown, cells, tmp_path / "results.md", tmp_path / "results.csv")
    assert md.read_text() == markdown
    rows = list(csv.DictReader(table.read_text().splitlines()))
    assert len(rows) == len(cells)
    # every aggregate cell: 4 metrics x (choreo all, lbs all, choreo walker, choreo quadruped, lbs walker)
    assert sum(row["table"] == "aggregate" for row in rows) == 4 * 5
    gap = next(r for r in rows if r["agent"] == "lbs" and r["group"] == "all" and r["metric"] == "optimality_gap")
    assert float(gap["value"]) == pytest.approx(0.6875) and float(gap["low"]) <= 0.6875 <= float(gap["high"])
    poi = next(r for r in rows if r["table"] == "probability_of_improvement")
    assert (poi["agent"], poi["group"]) == ("choreo", "lbs")
    assert float(poi["value"]) == pytest.approx((3.5 / 4 + 3 / 4) / 2)


def test_point_estimates_match_the_bootstrapped_points():
    scores = {"a": [0.2, 0.4], "b": [0.6, 0.8, 1.0]}
    assert scoring.point_estimates(scores) == {name: e.point for name, e in scoring.aggregate_one(scores, 100).items()}


# ------------------------------------------------------------------------------------ plot.py
def _run(folder, task, seed, agent, rows, header="episode,episode_reward,frame,step", task_id=None):
    (folder / ".hydra").mkdir(parents=True)
    config = f"task: {task}\nseed: {seed}\nagent:\n  name: {agent}\n" + (f"task_id: {task_id}\n" if task_id else "")
    (folder / ".hydra" / "config.yaml").write_text(config)
    (folder / "eval.csv").write_text("\n".join([header] + [",".join(map(str, row)) for row in rows]) + "\n")


def test_plot_writes_scores_figures_and_zero_shot_rates(tmp_path, capsys):
    import plot
    # walker_stand (984) at frames 1000, 2000: choreo 492 then 984, lbs 246 then 492 (two seeds each)
    for seed in (1, 2):
        for agent, first, final in (("choreo", 492, 984), ("lbs", 246, 492)):
            _run(tmp_path / "runs" / f"{agent}{seed}", "walker_stand", seed, agent,
                 [(1, first, 1000, 1), (2, final, 2000, 2)])
    # zero-shot: one evaluation at frame 0 with both rates; a Meta-World goal names its task_id
    header = "episode,episode_reward,frame,step,success_rate,goal_success_rate"
    for seed, rates in ((1, (0.2, 0.6)), (2, (0.4, 0.8))):
        _run(tmp_path / "runs" / f"zs{seed}", "jaco_reach_top_left", seed, "choreo", [(0, 10, 0, 0, *rates)], header)
    _run(tmp_path / "runs" / "mw", "mw_reach", 1, "choreo", [(0, 1, 0, 0, 0.5, "")], header, task_id=3)
    out = tmp_path / "plots"
    plot.main([str(tmp_path / "runs" / "*"), "--out", str(out), "--resamples", "200"])
    printed = capsys.readouterr().out
    table = (out / "eval_results.md").read_text()
    assert table in printed
    assert "| choreo | walker_stand | 2 | 984.0 ± 0.0 | 984 | 1.000 ± 0.000 |" in table
    assert "| lbs | 0.500 [0.500, 0.500] | 1.000 [1.000, 1.000] |" in table  # gap 1 - 0.5; choreo beats every lbs run
    assert "| choreo | jaco_reach_top_left | 2 | 0.300 [0.200, 0.400] (n=2) | 0.700 [0.600, 0.800] (n=2) |" in table
    assert "| choreo | mw_reach task_id=3 | 1 | 0.500 [0.500, 0.500] (n=1) | - |" in table
    rows = list(csv.DictReader((out / "eval_results.csv").read_text().splitlines()))
    assert {row["table"] for row in rows} == {"final", "aggregate", "probability_of_improvement", "zero_shot"}
    for name in ("eval_curves.png", "eval_profile.png", "eval_iqm.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and f"wrote {out / name}" in printed
    # the IQM curve: choreo 0.5 then 1.0, lbs 0.25 then 0.5 (the jaco runs' only frame 0 is not shared)
    curves = plot.normalised_curves(plot.load_runs([str(tmp_path / "runs" / "*")], "eval.csv", "frame",
                                                   "episode_reward", None, None))
    assert sorted(curves) == ["choreo", "lbs"] and list(curves["choreo"][1]) == ["walker_stand"]
    frames, per_task = curves["lbs"]
    assert list(frames) == [1000, 2000] and np.allclose(per_task["walker_stand"], [[0.25, 0.5]] * 2)
