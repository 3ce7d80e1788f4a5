"""The score and advantage-signal benchmarks run end to end on a tiny maze and report what they claim to."""

import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import types
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from maze_data import MAZE_ID, MAZE_STEPS, tiny_maze_root

from sb3_iql.datasets import make_pointmaze_dataset

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
TIMEOUT_S = 180


@pytest.fixture(scope="module")
def maze_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    yield from tiny_maze_root(tmp_path_factory)


def run_benchmark(name: str, *args: str, minari_root: pathlib.Path, succeeds: bool = True) -> str:
    """:return: the benchmark's stderr; asserts that it exits with 0 (``succeeds``) or not"""
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCHMARKS / name), *args, "--dataset-steps", str(MAZE_STEPS)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert (result.returncode == 0) == succeeds, f"{name}: exit code {result.returncode}\n{output}"
    return result.stderr


def test_scores_report(maze_root, tmp_path):
    out = tmp_path / "results"
    common = ["--datasets", MAZE_ID, "--updates", "20", "--eval-every", "10", "--seeds", "0", "1", "--eval-episodes", "1"]
    methods = ["--methods", "iql", "bc", "iql-ref+order+logstd+init", "d3rlpy-iql"]
    options = [*common, *methods, "--net-arch", "16", "--out", str(out), "--checkpoint-dir", str(tmp_path / "ckpt")]
    options += ["--bootstrap-reps", "100"]  # rough intervals: their computation is tested on its own below
    run_benchmark("scores.py", *options, minari_root=maze_root)
    runs = json.loads((out / "scores_runs.json").read_text())["runs"]
    by_method = {}
    for record in runs.values():
        by_method.setdefault(record["config"]["method"], []).append(record)
    assert sorted(by_method) == ["bc", "d3rlpy-iql", "iql", "iql-ref+order+logstd+init"]
    assert {record["hyperparameters"]["beta"] for record in by_method["bc"]} == {0.0}
    matched = by_method["iql-ref+order+logstd+init"][0]["hyperparameters"]
    assert matched["update_order"] == "joint" and matched["policy_kwargs"]["weight_init"] == "pytorch"
    assert by_method["d3rlpy-iql"][0]["peer_version"].startswith("d3rlpy ")
    # what d3rlpy took: its constant actor lr (the maze preset's "cosine" was recorded before), no IQL-only settings
    d3rlpy_settings = by_method["d3rlpy-iql"][0]["hyperparameters"]
    assert d3rlpy_settings["actor_lr_schedule"] == "constant" and "policy_extraction" not in d3rlpy_settings
    assert all([point["updates"] for point in record["curve"]] == [10, 20] for record in runs.values())
    assert all("fraction_at_goal_after" in record["curve"][-1] for record in runs.values())
    lines = (out / "scores.md").read_text().splitlines()
    rows = {line.split(" | ")[4]: line.split(" | ") for line in lines if line.startswith("| pointmaze/umaze-stitch")}
    assert set(rows) == {"sb3-iql IQL (defaults)", "sb3-iql BC (beta 0)", "sb3-iql IQL, reference + order + logstd + init",
                         "d3rlpy IQL"}  # fmt: skip
    finals = [record["final"] for record in sorted(by_method["iql"], key=lambda record: record["config"]["seed"])]
    cells = rows["sb3-iql IQL (defaults)"]
    assert cells[2:4] == ["16", "256"]  # net, batch
    assert cells[6] == " / ".join(f"{value:.1f}" for value in finals) and cells[8] == f"{min(finals):.1f}"
    assert cells[9].count("[") == 1 and cells[10].count("[") == 1  # IQM and P(> d3rlpy) with intervals (2 seeds)
    assert (out / "scores.png").is_file() and (out / "scores.csv").is_file()

    # Cached runs on the same id made again (other episodes), or of a method whose settings changed, are not mixed in.
    assert len({record["dataset_episodes"] for record in runs.values()}) == 1
    key, record = next((key, record) for key, record in runs.items() if record["config"]["method"] == "bc")
    changes = {"dataset_episodes": record["dataset_episodes"] + 1, "hyperparameters": {**record["hyperparameters"], "beta": 3}}
    for (field, changed), message in zip(changes.items(), ["another generation", "its method changed"]):
        (out / "scores_runs.json").write_text(json.dumps({"runs": {**runs, key: {**record, field: changed}}}))
        assert message in run_benchmark("scores.py", *options, minari_root=maze_root, succeeds=False)
    # A preset that changed: its earlier defaults run is kept under another key, in a row of its own, and trained anew
    key, record = next((key, record) for key, record in runs.items() if record["config"]["method"] == "iql")
    earlier = {**record, "hyperparameters": {**record["hyperparameters"], "beta": 3}}
    (out / "scores_runs.json").write_text(json.dumps({"runs": {**runs, key: earlier}}))
    run_benchmark("scores.py", *options, minari_root=maze_root)
    after = json.loads((out / "scores_runs.json").read_text())["runs"]
    assert (
        after[f"{key}|preset-before-{record['finished'][:10]}"] == earlier
        and after[key]["hyperparameters"] == record["hyperparameters"]
    )
    assert "| sb3-iql IQL, an earlier preset | 1 |" in (out / "scores.md").read_text()


def test_advantage_signal(maze_root, tmp_path):
    out = tmp_path / "advantage_signal"
    run_benchmark(
        "advantage_signal.py",
        *["--datasets", MAZE_ID, "--betas", "10", "0", "--updates", "30", "--net-arch", "16", "--batches", "3"],
        *["--eval-episodes", "1", "--far-from-goal", "1.5", "--out", str(out)],
        minari_root=maze_root,
    )
    by_beta = {result["beta"]: result for result in json.loads(out.with_suffix(".json").read_text())}
    assert set(by_beta) == {0.0, 10.0}
    # beta only changes the actor: the critics, and so every critic statistic, are the same
    for name in ("value_spread", "value_distance_spearman", "advantage_std", "advantage_speed_change_spearman"):
        assert by_beta[10.0][name] == by_beta[0.0][name], name
    assert by_beta[0.0]["batch_ess"] == pytest.approx(1.0) and by_beta[0.0]["clipped_weight_share"] == 0.0
    assert 0.0 < by_beta[10.0]["batch_ess"] < 1.0
    assert by_beta[10.0]["path_length_m"] > 0.0 and 0.0 <= by_beta[10.0]["success_rate"] <= 1.0
    assert "| sb3_iql/pointmaze/umaze-stitch-v0 | 10 | 30 |" in out.with_suffix(".md").read_text()
    # thresholds that leave no far state: refused before training, not a NaN value spread
    stderr = run_benchmark(
        "advantage_signal.py",
        *["--datasets", MAZE_ID, "--updates", "30", "--far-from-goal", "50", "--out", str(tmp_path / "refused")],
        minari_root=maze_root,
        succeeds=False,
    )
    assert "leave no state on one side" in stderr and not (tmp_path / "refused.json").exists()


@pytest.mark.parametrize("progress_written", [True, False])  # False: killed between the model's save and its progress
def test_an_interrupted_score_run_resumes_to_the_same_parameters(maze_root, tmp_path, monkeypatch, progress_written):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(maze_root))
    import scores

    from sb3_iql import IQL
    from sb3_iql.data.minari_loader import load_dataset

    dataset = load_dataset(MAZE_ID)
    # The maze preset's DDPG + AWR, with actor dropout: its masks come from torch's global generator, which the
    # checkpoint keeps too
    method = "iql-ref+ddpgawr0.01+dropout"
    config = scores.RunConfig(MAZE_ID, dataset.total_steps, method, 0, 30, 10, 1, (16,), 64)
    straight = scores.train_iql(config, dataset, tmp_path / "ckpt_straight", tmp_path / "straight")

    write_json, calls = scores.write_json, []

    def interrupt_after_the_second_checkpoint(path, data):
        calls.append(path)
        if len(calls) == 2 and not progress_written:
            raise KeyboardInterrupt  # the model of 20 updates saved, the progress of 10 (the curve lost a point)
        write_json(path, data)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(scores, "write_json", interrupt_after_the_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        scores.train_iql(config, dataset, tmp_path / "ckpt", tmp_path / "resumed")
    monkeypatch.setattr(scores, "write_json", write_json)
    resumed = scores.train_iql(config, dataset, tmp_path / "ckpt", tmp_path / "resumed")

    assert [point["updates"] for point in resumed["curve"]] == [10, 20, 30]
    assert [p["mean_return"] for p in resumed["curve"]] == [p["mean_return"] for p in straight["curve"]]
    name = scores._checkpoint_path(tmp_path, config).name
    first, second = IQL.load(tmp_path / "straight" / name), IQL.load(tmp_path / "resumed" / name)
    for (key, value), other in zip(first.policy.state_dict().items(), second.policy.state_dict().values()):
        assert th.equal(value, other), key


def test_a_checkpoint_of_other_settings_is_not_resumed(maze_root, tmp_path, monkeypatch):
    """A method whose settings changed between a run's interruption and its resumption ended as a mix of both,
    recorded under the new ones."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(maze_root))
    import scores

    from sb3_iql.data.minari_loader import load_dataset

    dataset = load_dataset(MAZE_ID)
    config = scores.RunConfig(MAZE_ID, dataset.total_steps, "iql-ref", 0, 20, 10, 1, (16,), 64)
    write_json = scores.write_json

    def interrupt_after_the_first_checkpoint(path, data):
        write_json(path, data)
        raise KeyboardInterrupt

    monkeypatch.setattr(scores, "write_json", interrupt_after_the_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        scores.train_iql(config, dataset, tmp_path / "ckpt", None)
    monkeypatch.setattr(scores, "write_json", write_json)
    started = config.hyperparameters()
    monkeypatch.setattr(scores.RunConfig, "hyperparameters", lambda self: {**started, "beta": 1.0})
    with pytest.raises(SystemExit, match=r"was started with .*'beta': 10\.0.*its method changed since"):
        scores.train_iql(config, dataset, tmp_path / "ckpt", None)


def test_a_d3rlpy_run_killed_between_its_networks_and_its_progress_resumes_from_the_networks_its_progress_names(
    tmp_path, monkeypatch
):
    """The networks of the next chunk overwrote those the progress named: the chunk was trained twice."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import peers

    class Networks:
        def __init__(self, updates: int = 0):
            self.updates = updates

        def save_model(self, path: str) -> None:
            pathlib.Path(path).write_text(str(self.updates))

        def load_model(self, path: str) -> None:
            self.updates = int(pathlib.Path(path).read_text())

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # before the progress is written

    checkpoint = tmp_path / "run.pt"
    peers.save_d3rlpy(checkpoint, Networks(100), {"curve": [{"updates": 100}]})
    peers.save_d3rlpy(checkpoint, Networks(200), {"curve": [{"updates": 100}, {"updates": 200}]})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.200.d3", "run.pt"]  # the earlier ones dropped
    monkeypatch.setattr(peers.th, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        peers.save_d3rlpy(checkpoint, Networks(300), {"curve": [{"updates": u} for u in (100, 200, 300)]})
    monkeypatch.undo()
    resumed = Networks()
    progress = peers.load_d3rlpy(checkpoint, resumed)
    assert progress["curve"][-1]["updates"] == resumed.updates == 200


def test_spaces_speed_reports_the_image_buffer_at_the_raw_frames(monkeypatch):
    sys.path.insert(0, str(BENCHMARKS))
    import spaces_speed  # benchmarks/spaces_speed.py

    monkeypatch.setattr(spaces_speed, "N_TRANSITIONS", 600)
    monkeypatch.setattr(spaces_speed, "EPISODE_STEPS", 50)
    result = spaces_speed.measure(1, th.device("cpu"))
    discrete, image = result["rows"]
    assert discrete["updates_per_s"] > 0 and image["updates_per_s"] > 0
    assert image["frames_written_mb"] == pytest.approx(image["raw_frames_plus_one_per_episode_mb"])
    assert image["frames_written_mb"] < image["float32_two_copies_mb"] / 7.5  # 8x, less one frame per episode
    assert "| DeviceImageReplayBuffer |" in spaces_speed.render(result, "cpu")


def test_million_updates_counts_its_chunks_and_stops_at_its_time_limit(monkeypatch):
    sys.path.insert(0, str(BENCHMARKS))
    import million_updates  # benchmarks/million_updates.py
    import speed  # benchmarks/speed.py

    monkeypatch.setattr(speed, "N_TRANSITIONS", 2_000)
    monkeypatch.setattr(speed, "HIDDEN", 16)
    saved: list[dict] = []  # after each chunk: a stage's time limit kills the script before its end
    full = million_updates.run(
        "auto", 12, chunk=5, max_seconds=float("inf"), device=th.device("cpu"), peer_updates=3, on_chunk=saved.append
    )
    assert full["updates"] == 12 and len(full["chunk_updates_per_s"]) == 3 and full["finite"]  # 5 + 5 + 2
    assert [figures["updates"] for figures in saved] == [5, 10, 12] and saved[0]["first_chunk_s"] > 0
    assert len(full["peer_updates_per_s"]) == 2  # d3rlpy before and after
    assert "d3rlpy's IQL on the same data, 3 updates before the run and after" in million_updates.render(
        {**full, "torch": th.__version__, "date": "today"}, "cpu"
    )
    stopped = million_updates.run("fused", 12, chunk=5, max_seconds=0.0, device=th.device("cpu"))
    assert stopped["updates"] == 5 and stopped["ratio_to_peer"] is None  # the first chunk always runs; no peer
    section = million_updates.render({**stopped, "torch": th.__version__, "threads": 2, "date": "today"}, "cpu")
    assert "12 updates (stopped at 5)" in section and "| 5 |" in section and "cpu, 2 thread(s)" in section
    assert full["ran"] == stopped["ran"] == "eager update" and "ran: eager update" in section  # what trained
    # a chunk that would end past the limit (at the last chunk's pace) does not start
    # the script's clock: start 0, a first chunk from 0 to 10 s, then 18 s read when deciding on the next
    clock = iter([0.0, 0.0, 10.0, *[18.0] * 3, *[28.0] * 20])
    monkeypatch.setattr(million_updates, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    paced = million_updates.run("fused", 12, chunk=5, max_seconds=25.0, device=th.device("cpu"))
    assert paced["updates"] == 5, "at 18 s, the second chunk would end after 25 s: it does not start"
    with pytest.raises(ValueError, match="sb3-iql's paths"):
        million_updates.run("d3rlpy", 12, chunk=5, max_seconds=1.0, device=th.device("cpu"))


def test_a_resumed_locomotion_run_ends_the_episode_its_checkpoint_cut():
    """learn() resumes from a reset: the open episode ran on into the next one in the replay dataset, unflagged."""
    sys.path.insert(0, str(BENCHMARKS))
    from make_locomotion_datasets import end_open_episode  # benchmarks/make_locomotion_datasets.py
    from stable_baselines3.common.buffers import ReplayBuffer

    env = gym.make("Pendulum-v1")
    buffer = ReplayBuffer(10, env.observation_space, env.action_space, device="cpu")
    obs = np.zeros((1, 3), np.float32)
    for done in (False, True, False):  # an episode ended, the next one open at the checkpoint
        buffer.add(obs, obs, np.zeros((1, 1)), np.zeros(1), np.array([done]), [{}])
    end_open_episode(buffer)
    assert buffer.dones[:3, 0].tolist() == [0, 1, 1] and buffer.timeouts[:3, 0].tolist() == [0, 0, 1]
    end_open_episode(buffer)  # called again: nothing changes
    assert buffer.timeouts[:3, 0].tolist() == [0, 0, 1]


def test_the_locomotion_fingerprint_records_each_machine_once_and_says_which_parts_differ(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(BENCHMARKS))
    import make_locomotion_datasets as loco  # benchmarks/make_locomotion_datasets.py

    monkeypatch.setattr(loco, "FINGERPRINT_STEPS", 510)  # 10 SAC updates after its 500 random steps
    args = types.SimpleNamespace(env="Hopper-v5", seed=0, portable=True, results_dir=tmp_path)
    found = loco.fingerprint(args)
    assert set(found["parts"]) == {"mujoco", "sgemm", "normal", "elementwise", "sac_init"}
    monkeypatch.setattr(loco, "fingerprint_parts", lambda args: {})
    without_parts = loco.fingerprint(args)  # the parts leave SAC's seeding, so the recorded hashes, as they were
    assert without_parts["parameters_sha256"] == found["parameters_sha256"]
    assert without_parts["observations_sha256"] == found["observations_sha256"]
    monkeypatch.undo()
    monkeypatch.setattr(loco, "FINGERPRINT_STEPS", 510)
    other_machine = {"cpu": "Another CPU"}
    other_parts = {**found["parts"], "sgemm": "0" * 16}
    record = {
        "fingerprint": {"steps": 510, "parameters_sha256": "0" * 16, "observations_sha256": "0" * 16},
        "fingerprints_elsewhere": [{"machine": other_machine, "fingerprint": {**found, "parts": other_parts}}],
    }
    recorded_file = loco.results_stem(args).with_suffix(".json")
    recorded_file.write_text(json.dumps(record))
    for _ in range(2):  # another generation: refused, and recorded once
        with pytest.raises(SystemExit, match="makes another generation"):
            loco.check_fingerprint(args)
        assert "Parts that differ from those of Another CPU: sgemm" in capsys.readouterr().out
    elsewhere = json.loads(recorded_file.read_text())["fingerprints_elsewhere"]
    assert len(elsewhere) == 2 and elsewhere[1]["fingerprint"] == found and "torch" in elsewhere[1]["versions"]


def test_graph_replays_counts_each_kernel_of_a_trace_per_update_and_the_device_s_idle_time():
    sys.path.insert(0, str(BENCHMARKS))
    import graph_replays  # benchmarks/graph_replays.py

    def kernel(name: str, start: float, duration: float) -> dict:
        return {"ph": "X", "cat": "kernel", "name": name, "ts": start, "dur": duration}

    events = [  # two updates: a matrix product (4 us) and a Triton kernel (2 us) each; a CPU op and a launch not counted
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0.0, "dur": 50.0},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": 1.0, "dur": 3.0},
        kernel("sm90_xmma_gemm_f32f32_tf32f32", 10.0, 4.0),
        kernel("triton_poi_fused_relu_0", 15.0, 2.0),
        kernel("sm90_xmma_gemm_f32f32_tf32f32", 20.0, 4.0),
        kernel("triton_poi_fused_relu_0", 25.0, 2.0),
    ]
    summary = graph_replays.kernel_summary(events, n_updates=2)
    assert summary["kernels_per_update"] == 2 and summary["kernel_us_per_update"] == 6.0
    assert summary["span_us_per_update"] == 8.5 and summary["busy_fraction"] == pytest.approx(12 / 17)
    assert summary["kinds"] == [
        {"name": "matrix products", "per_update": 1.0, "us_per_update": 4.0},
        {"name": "Triton (fused by Inductor)", "per_update": 1.0, "us_per_update": 2.0},
    ]
    assert [row["name"] for row in summary["top"]] == ["sm90_xmma_gemm_f32f32_tf32f32", "triton_poi_fused_relu_0"]
    result = {"torch": "2", "date": "today", "replays": [{"updates_per_replay": 1, "updates_per_s": 3000.0}],
              "learn_offline_updates": 10, "learn_offline_updates_per_s": 2000.0, "kernels": summary}  # fmt: skip
    section = graph_replays.render(result, "GPU")
    assert "2 kernels and 6 us of kernel time per update, in a span of 8 us per update (kernels fill 71% of it)" in section
    assert "| matrix products | 1.0 | 4.0 |" in section
    assert "could not be profiled: RuntimeError('no CUPTI')" in graph_replays.render(
        {**result, "kernels": {"error": "RuntimeError('no CUPTI')"}}, "GPU"
    )
    with pytest.raises(ValueError, match="no kernels"):
        graph_replays.kernel_summary(events[:2], n_updates=1)


def test_seeds_trained_together_reach_their_separate_runs_even_from_different_checkpoints(maze_root, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(maze_root))
    import scores

    from sb3_iql import IQL
    from sb3_iql.data.minari_loader import load_dataset

    dataset = load_dataset(MAZE_ID)
    configs = [scores.RunConfig(MAZE_ID, dataset.total_steps, "iql-ref", seed, 30, 10, 1, (16,), 64) for seed in (0, 1)]
    for config in configs:
        scores.train_iql(config, dataset, tmp_path / "ckpt_separate", tmp_path / "separate")
    write_json = scores.write_json

    def interrupt_after_the_first_checkpoint(path, data):
        write_json(path, data)
        raise KeyboardInterrupt

    monkeypatch.setattr(scores, "write_json", interrupt_after_the_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):  # seed 1 stops at 10 updates, seed 0 has not started
        scores.train_iql(configs[1], dataset, tmp_path / "ckpt", tmp_path / "together")
    monkeypatch.setattr(scores, "write_json", write_json)
    progresses = scores.train_iql_together(configs, dataset, tmp_path / "ckpt", tmp_path / "together")

    assert all([point["updates"] for point in progress["curve"]] == [10, 20, 30] for progress in progresses)
    assert [progress["trained_together"] for progress in progresses] == [2, 2]
    for config in configs:
        name = scores._checkpoint_path(tmp_path, config).name
        separate, together = IQL.load(tmp_path / "separate" / name), IQL.load(tmp_path / "together" / name)
        for value, other in zip(separate.policy.state_dict().values(), together.policy.state_dict().values()):
            th.testing.assert_close(value, other, rtol=1e-4, atol=1e-5)


def test_value_map_puts_each_open_cell_s_value_at_its_place_and_walls_blank(maze_root, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(maze_root))
    import value_map  # benchmarks/value_map.py

    from sb3_iql import IQL
    from sb3_iql.data.minari_loader import load_dataset

    env = load_dataset(MAZE_ID).recover_environment(eval_env=True)
    maze, goal = env.unwrapped.maze, np.array([1.0, -1.0])
    model = IQL("MultiInputPolicy", env, offline_dataset=MAZE_ID, policy_kwargs={"net_arch": [16]}, seed=0)
    model.learn_offline(5)
    grid = value_map.value_grid(model, maze, goal)

    walls = np.array([[cell == 1 for cell in cells] for cells in maze.maze_map])  # open cells may be "g" or "r"
    assert grid.shape == walls.shape and np.array_equal(np.isnan(grid), walls)
    row, column = map(int, np.argwhere(~walls)[-1])  # an open cell
    x, y = maze.cell_rowcol_to_xy(np.array([row, column]))
    obs = {"observation": [[x, y, 0.0, 0.0]], "achieved_goal": [[x, y]], "desired_goal": [goal]}
    with th.no_grad():
        expected = model.policy.value_net({key: th.tensor(value, dtype=th.float32) for key, value in obs.items()})
    assert grid[row, column] == pytest.approx(expected.item(), abs=1e-6)
    lines = value_map.render(grid, (row, column)).splitlines()
    assert len(lines) == walls.shape[0] and lines[row].split()[column] == f"{grid[row, column]:.1f}*"


class _LineThroughTheGoal(gym.Env):
    """A point moving at 2 m/s along x through a goal at the origin: after step t it is at x = -1 + 0.2 t (10 steps)."""

    observation_space = gym.spaces.Dict(
        {
            key: gym.spaces.Box(-np.inf, np.inf, (size,))
            for key, size in (("observation", 4), ("achieved_goal", 2), ("desired_goal", 2))
        }
    )
    action_space = gym.spaces.Box(-1.0, 1.0, (2,))

    def __init__(self, start: float = -1.0):
        self.start, self.t = start, 0

    def _observation(self) -> dict[str, np.ndarray]:
        position = np.array([self.start + 0.2 * self.t, 0.0])
        return {"observation": np.array([*position, 2.0, 0.0]), "achieved_goal": position, "desired_goal": np.zeros(2)}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._observation(), {}

    def step(self, action):
        self.t += 1
        return self._observation(), 0.0, False, self.t == 10, {}


def test_goal_dwell_measures_what_a_policy_does_after_its_first_arrival(maze_root, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(maze_root))
    import goal_dwell  # benchmarks/goal_dwell.py
    import value_map

    from sb3_iql import IQL
    from sb3_iql.data.minari_loader import load_dataset

    def idle(observation):
        return np.zeros(2)

    # distances after each step: 0.8, 0.6, 0.4 (first arrival, step 3), 0.2, 0, 0.2, 0.4, 0.6, 0.8, 1.0
    dwell = goal_dwell.policy_dwell(idle, _LineThroughTheGoal(), n_episodes=2)
    assert dwell["reached"] == 1.0 and dwell["first_step"] == 3
    assert dwell["at_goal"] == pytest.approx(5 / 8) and dwell["distance_after"] == pytest.approx(0.4)
    assert dwell["speed_at_goal"] == pytest.approx(2.0) and dwell["at_rest_after"] == 0.0
    never = goal_dwell.policy_dwell(idle, _LineThroughTheGoal(start=1.0), n_episodes=1)  # moves away from it
    assert never["reached"] == 0.0 and np.isnan(never["at_goal"])

    env = load_dataset(MAZE_ID).recover_environment(eval_env=True)
    maze = env.unwrapped.maze
    model = IQL("MultiInputPolicy", env, offline_dataset=MAZE_ID, policy_kwargs={"net_arch": [16]}, seed=0)
    model.learn_offline(5)
    walls = np.array([[value == 1 for value in cells] for cells in maze.maze_map])  # open cells may be "g" or "r"
    cell = tuple(map(int, np.argwhere(~walls)[0]))
    centre = maze.cell_rowcol_to_xy(np.array(cell))
    critics = goal_dwell.critics_at_goal(model, centre)
    assert critics["value"] == pytest.approx(value_map.value_grid(model, maze, centre)[cell], abs=1e-6)
    position = th.tensor([centre], dtype=th.float32).repeat(9, 1)
    obs = {
        "observation": th.cat([position, th.zeros_like(position)], dim=1),
        "achieved_goal": position,
        "desired_goal": position,
    }
    actions = th.tensor([[a, b] for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.0, 1.0)])
    with th.no_grad():
        q_values = th.min(*model.policy.critic(obs, actions))
    assert critics["q_spread"] == pytest.approx((q_values.max() - q_values.min()).item(), abs=1e-6)


def test_first_layer_kinks_start_at_the_data_mean_only_with_normalised_inputs_and_zero_biases(maze_root, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(maze_root))
    import first_layer_kinks  # benchmarks/first_layer_kinks.py

    from sb3_iql import IQL

    median_offsets = {}
    for spread in (False, True):
        policy_kwargs = {"net_arch": [64], "normalize_observations": True, "spread_first_layer_biases": spread}
        model = IQL("MultiInputPolicy", None, offline_dataset=MAZE_ID, policy_kwargs=policy_kwargs, seed=0)
        data = model.replay_buffer.sample(5000)
        pre = first_layer_kinks.first_layer_preactivations(model, data.observations, data.actions)
        assert pre["actor"].shape == (64, 5000) and pre["critics"].shape == (2 * 64, 5000)
        layer, normalizer = model.policy.value_net.v_network[0][0], model.policy.observation_normalizer
        normalized = normalizer(data.observations)
        inputs = th.cat([normalized[key] for key in sorted(normalized)], dim=-1)  # SB3 flattens Dict keys sorted
        th.testing.assert_close(pre["value"], layer(inputs).T.detach())
        median_offsets[spread] = (pre["value"].mean(dim=1) / pre["value"].std(dim=1)).abs().median().item()
    assert median_offsets[False] < 0.1 < 0.3 < median_offsets[True]


def test_the_stitch_aggregate_scores_success_beside_the_normalized_score(monkeypatch):
    sys.path.insert(0, str(BENCHMARKS))
    import score_report  # benchmarks/score_report.py

    monkeypatch.setattr(score_report, "BOOTSTRAP_REPS", 50)

    def record(maze: str, method: str, seed: int, final: float, success: float) -> dict:
        setting = {"dataset_steps": 100, "updates": 10, "eval_every": 5, "eval_episodes": 20, "net_arch": [16]}
        config = {"dataset_id": f"sb3_iql/pointmaze/{maze}-stitch-v0", **setting, "batch_size": 8}
        config.update(method=method, seed=seed)
        return {"config": config, "final": final, "curve": [{"success_rate": success}]}

    # ours reaches the goal on every episode but stays there less than d3rlpy does
    runs = [record(maze, "iql", seed, 10.0, 1.0) for maze in ("medium", "large") for seed in range(3)]
    runs += [record(maze, "d3rlpy-iql", seed, 20.0 + seed, 0.5) for maze in ("medium", "large") for seed in range(3)]
    groups = score_report.group_runs({str(index): run for index, run in enumerate(runs)}, None)
    (entry,) = score_report.stitch_aggregate(groups).values()
    ours = entry["methods"]["iql"]
    assert ours["iqm"][0] == 10.0 and ours["p_improvement"][0] == 0.0
    assert ours["success_iqm"][0] == 100.0 and ours["success_worst"] == 100.0 and ours["success_p_improvement"][0] == 1.0
    assert entry["methods"]["d3rlpy-iql"]["success_iqm"][0] == 50.0


def test_report_intervals_depend_on_their_scores_alone_and_are_resampled_only_when_those_change(monkeypatch, tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    import score_report  # benchmarks/score_report.py

    monkeypatch.setattr(score_report, "BOOTSTRAP_REPS", 50)
    scores, peer = np.linspace(0.0, 50.0, 12)[:, None] ** 1.5, np.linspace(10.0, 60.0, 9)[:, None] ** 1.5
    cache = tmp_path / score_report.INTERVAL_CACHE_FILE
    score_report.load_interval_cache(cache)
    iqm, improvement = score_report.iqm_with_ci(scores), score_report.improvement_with_ci(scores, peer)
    assert iqm[1] < iqm[0] < iqm[2]
    # resampled again after NumPy's global generator moved on (rliable draws from it): the same intervals
    score_report.load_interval_cache(cache)
    np.random.rand(3)
    assert score_report.iqm_with_ci(scores) == iqm and score_report.improvement_with_ci(scores, peer) == improvement
    score_report.save_interval_cache(cache)

    def resampled(*args, **kwargs):
        raise AssertionError("resampled")

    score_report.load_interval_cache(cache)
    monkeypatch.setattr(score_report.rly, "get_interval_estimates", resampled)
    assert score_report.iqm_with_ci(scores) == iqm  # from the last report
    for changed in (lambda: score_report.iqm_with_ci(scores + 1.0), lambda: score_report.improvement_with_ci(peer, scores)):
        with pytest.raises(AssertionError, match="resampled"):
            changed()
    monkeypatch.setattr(score_report, "BOOTSTRAP_REPS", 60)
    with pytest.raises(AssertionError, match="resampled"):
        score_report.iqm_with_ci(scores)
    score_report.save_interval_cache(cache)  # keeps what this report used: the first interval only
    assert len(json.loads(cache.read_text())) == 1


def test_the_reference_method_keeps_the_paper_s_settings_whatever_a_dataset_s_preset_tuned():
    sys.path.insert(0, str(BENCHMARKS))
    import scores  # benchmarks/scores.py

    def hyperparameters(recipe: str, method: str) -> dict:
        dataset_id = f"sb3_iql/pointmaze/medium-{recipe}-v0"
        return scores.RunConfig(dataset_id, 1000, method, 0, 30, 10, 1, (16,), 64).hyperparameters()

    # the AntMaze-v1 replicas' presets: hindsight goals (evaluation cell never a goal), beta 0.3 (near-expert data)
    assert hyperparameters("antmaze-unseen", "iql")["replay_buffer_class"] == "HerReplayBuffer"
    assert hyperparameters("antmaze", "iql")["beta"] == 0.3
    for method in ("iql-ref", "iql-ref+beta3", "bc"):
        assert "replay_buffer_class" not in hyperparameters("antmaze-unseen", method), method
    assert hyperparameters("antmaze", "iql-ref")["beta"] == 10.0 and hyperparameters("antmaze", "iql-ref")["expectile"] == 0.9
    assert hyperparameters("antmaze", "iql-ref+beta3")["beta"] == 3.0 and hyperparameters("antmaze", "bc")["beta"] == 0.0
    assert hyperparameters("antmaze-unseen", "iql-ref+her")["replay_buffer_class"] == "HerReplayBuffer"


def test_the_defaults_row_is_every_run_of_the_preset_whichever_method_named_it(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import score_report  # benchmarks/score_report.py
    import scores  # benchmarks/scores.py

    def config(method: str, seed: int) -> "scores.RunConfig":
        return scores.RunConfig("sb3_iql/pointmaze/medium-stitch-v0", 1000, method, seed, 30, 10, 1, (16,), 64)

    def record(method: str, seed: int, final: float, **changed: float) -> tuple[str, dict]:
        run = config(method, seed)
        hyperparameters = {**run.hyperparameters(), **changed}
        curve = [{"updates": 30, "normalized_score": final, "success_rate": 1.0}]
        cached = {"config": dataclasses.asdict(run), "hyperparameters": hyperparameters, "curve": curve, "final": final}
        return run.key, {**cached, "finished": "2026-12-01T10:00:00", "dataset_episodes": 7}

    # the stitch preset is the paper's IQL with DDPG + AWR 0.01 and actor dropout 0.1, spelled out as iql-ref+...
    preset_twin = "iql-ref+ddpgawr0.01+dropout"
    assert scores.trains_the_preset(record(preset_twin, 0, 1.0)[1])
    assert not scores.trains_the_preset(record("iql-ref+ddpgawr0.01+dropout+init", 0, 1.0)[1])
    assert not scores.trains_the_preset(record("d3rlpy-iql", 0, 1.0)[1])
    runs = dict(
        [
            record("iql", 0, 10.0),
            record(preset_twin, 0, 99.0),  # the same model and seed trained again: the iql run stays in the row
            record(preset_twin, 1, 11.0),
            record("iql-ref", 2, 12.0),  # the paper's AWR: not the preset
            record("iql", 3, 13.0, dropout=0.2),  # an earlier preset
        ]
    )
    (groups,) = score_report.group_runs(runs, None, scores.trains_the_preset).values()
    assert [(run["config"]["seed"], run["final"]) for run in groups["iql"]] == [(0, 10.0), (1, 11.0)]
    assert [run["final"] for run in groups["iql-earlier"]] == [13.0]
    assert [run["final"] for run in groups[preset_twin]] == [99.0, 11.0]
    # names alone without the preset check, as before
    assert [run["final"] for run in score_report.group_runs(runs, None)[config("iql", 0).setting]["iql"]] == [10.0, 13.0]
    score_report.check_one_model_per_row(
        score_report.group_runs(runs, None, scores.trains_the_preset), scores.canonical_hyperparameters
    )
    mixed = dict([record("iql-ref", 4, 12.0, beta=1.0), *runs.items()])  # iql-ref's settings changed between seeds
    with pytest.raises(SystemExit, match=r"The row of iql-ref on .*medium-stitch-v0 \(30 updates\) holds runs of diff"):
        score_report.check_one_model_per_row(
            score_report.group_runs(mixed, None, scores.trains_the_preset), scores.canonical_hyperparameters
        )

    # training iql: seed 1 is cached under the twin's name, seed 2 is not; the earlier preset's seed 3 is kept aside
    assert scores.cached_run(runs, config("iql", 1))["final"] == 11.0
    assert scores.cached_run(runs, config("iql", 2)) is None and scores.cached_run(runs, config("iql-ref", 2)) is not None
    dataset = types.SimpleNamespace(total_episodes=7)
    assert not scores.set_aside_earlier_presets(runs, [config("iql", 3)], types.SimpleNamespace(total_episodes=8))
    assert scores.set_aside_earlier_presets(runs, [config("iql", seed) for seed in range(4)], dataset)
    assert config("iql", 3).key not in runs and runs[config("iql", 3).key + "|preset-before-2026-12-01"]["final"] == 13.0
    assert scores.cached_run(runs, config("iql", 3)) is None
    assert not scores.set_aside_earlier_presets(runs, [config("iql", seed) for seed in range(4)], dataset)


def test_pixel_critics_finds_a_model_identical_to_itself_and_counts_cells_to_the_goal(maze_root, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(maze_root))
    import pixel_critics  # benchmarks/pixel_critics.py

    from sb3_iql import IQL
    from sb3_iql.data.minari_loader import load_dataset

    small = {"policy_kwargs": {"net_arch": [16]}, "batch_size": 32, "seed": 0, "offline_steps": 20}
    model = IQL("MultiInputPolicy", None, offline_dataset=MAZE_ID, **small)
    model.learn_offline(20)
    model.save(tmp_path / "model")
    path = tmp_path / "model.zip"
    result = pixel_critics.compare(path, path, n_transitions=256, seed=0, n_ranked=(20, 8))
    for name in ("value_spearman", "advantage_spearman", "weight_spearman", "action_ranking_spearman", "policy_cosine"):
        assert result[name] == pytest.approx(1.0), name
    assert result["value_path_spearman_pixel"] == result["value_path_spearman_state"]
    assert result["state_advantage_pixel_policy"] == result["state_advantage_state_policy"]
    other = IQL("MultiInputPolicy", None, offline_dataset=MAZE_ID, **{**small, "seed": 1})
    other.learn_offline(20)
    other.save(tmp_path / "other")
    result = pixel_critics.compare(path, tmp_path / "other.zip", n_transitions=256, seed=0, n_ranked=(20, 8))
    assert result["value_spearman"] < 0.99 and result["policy_cosine"] < 0.99  # another seed: other critics and actor

    goal = model.replay_buffer.sample(1).observations["desired_goal"][0].numpy()
    maze = load_dataset(MAZE_ID).recover_environment(eval_env=True).unwrapped.maze
    goal_row, goal_column = (int(index) for index in maze.cell_xy_to_rowcol(goal))
    open_cells = [(r, c) for r, line in enumerate(maze.maze_map) for c, cell in enumerate(line) if cell != 1]
    positions = np.array([maze.cell_rowcol_to_xy(np.array(cell)) for cell in open_cells])
    hops = dict(zip(open_cells, pixel_critics.cells_to_goal(model, positions, goal)))
    assert hops[(goal_row, goal_column)] == 0
    for (row, column), count in hops.items():  # each open cell is one move farther than its nearest neighbour
        around = ((row - 1, column), (row + 1, column), (row, column - 1), (row, column + 1))
        assert count == 0 or min(hops[cell] for cell in around if cell in hops) == count - 1
    assert max(hops.values()) >= 4  # the U: the far arm is several moves away


def test_a_score_run_refuses_a_dataset_without_scores_before_training(minari_root, tmp_path):
    from toy_data import LineEnv, good_policy, rollout_episodes, write_dataset

    make_pointmaze_dataset("umaze", "sparse", stitch=True, n_steps=MAZE_STEPS, n_reference_episodes=2)
    env = LineEnv()  # unregistered: Minari keeps no reference scores
    write_dataset("test/line/unscored-v0", rollout_episodes(env, [good_policy], n_episodes=2), env=env)
    out = tmp_path / "results"
    error = run_benchmark("scores.py", "--datasets", MAZE_ID, "test/line/unscored-v0", "--updates", "4", "--eval-every",
                          "2", "--seeds", "0", "--eval-episodes", "1", "--net-arch", "8", "--out", str(out),
                          minari_root=minari_root, succeeds=False)  # fmt: skip
    assert "dataset 'test/line/unscored-v0': it has no reference scores" in error
    assert not (out / "scores_runs.json").exists(), "the first dataset trained, then evaluation crashed"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--updates", "0"], "argument --updates: must be at least 1, got 0"),  # an IndexError after the dataset before
        (["--eval-episodes", "0"], "argument --eval-episodes: must be at least 1"),  # NaN scores cached before
        (["--net-arch", "8", "0"], "argument --net-arch: must be at least 1"),  # a network of width 0 trained before
        (["--device", "gpu0"], "argument --device: Invalid device string"),
        (["--datasets", "not an id"], "Malformed dataset id 'not an id'"),
        (["--report-only", "--out", "no/such/folder"], r"--report-only: no runs in no/such/folder"),
        (["--seeds", "0", "-1"], "argument --seeds: must be at least 0, got -1"),  # SB3's seeding failed, after loading
        (["--methods", "iql-ref+evalgoalterm+her"], "evalgoalterm cannot go with her"),  # IQL refuses it, mid-run
    ],
)
def test_score_run_arguments_that_cannot_run_are_argparse_errors(monkeypatch, capsys, arguments, message):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import scores

    monkeypatch.setattr(sys, "argv", ["scores.py", *arguments])
    with pytest.raises(SystemExit) as exit_info:
        scores.parse_args()
    assert exit_info.value.code == 2 and re.search(message, capsys.readouterr().err)
