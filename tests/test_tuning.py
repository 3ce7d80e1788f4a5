"""rl-zoo's Optuna search for offline IQL: the sampler, one study in one process, two workers on one SQLite storage,
a worker killed in the middle of a trial, and the best trial trained again from the printed command."""

import glob
import os
import pathlib
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing

import optuna
import pytest
import torch as th
import yaml
from maze_data import MAZE_ENV_ID, MAZE_ID, tiny_maze_root

from sb3_iql import IQL
from sb3_iql.iql import MultiInputPolicy
from sb3_iql.presets import preset_arguments

zoo = pytest.importorskip("sb3_iql.zoo", reason="rl-zoo3 is not installed (pip install 'sb3_iql[zoo]')")
from sb3_iql import tuning  # noqa: E402  (needs optuna, installed with rl-zoo3)

#: A study of tiny trials: 4 offline updates each, evaluated after 2 and 4 updates on one episode.
STUDY = ["--seed", "3", "--num-threads", "1", "--n-evaluations", "2", "--eval-episodes", "1", "--no-optim-plots"]
STUDY_PARAMS = ["-params", "offline_steps:4"]


@pytest.fixture(scope="module")
def maze_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    yield from tiny_maze_root(tmp_path_factory)


def worker(storage: str, study_name: str, logs: pathlib.Path, *extra: str) -> subprocess.Popen:
    """A worker process of a shared study (``python -m sb3_iql.zoo train --optimize ...``)."""
    command = [sys.executable, "-m", "sb3_iql.zoo", "train", "--dataset", MAZE_ID, "--optimize", "-f", str(logs),
               "--storage", storage, "--study-name", study_name, *STUDY, *extra]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def test_the_sampler_draws_iql_arguments_and_the_preset_is_a_point_of_its_space():
    trial = optuna.trial.FixedTrial(
        {"expectile": 0.8, "beta": 5.0, "learning_rate": 1e-3, "batch_size": 128, "net_arch": "small", "dropout": 0.0}
    )
    arguments = tuning.sample_iql_params(trial, n_actions=2, n_envs=1, additional_args={})
    assert arguments == {
        "expectile": 0.8,
        "beta": 5.0,
        "learning_rate": 1e-3,
        "batch_size": 128,
        "policy_kwargs": {"net_arch": [64, 64]},
        "dropout": None,
    }
    preset = preset_arguments("D4RL/antmaze/large-diverse-v1")
    first = tuning.preset_trial(preset)
    paper = {"expectile": 0.9, "beta": 10.0, "learning_rate": 3e-4, "batch_size": 256, "net_arch": "medium", "dropout": 0.0}
    assert first == paper
    assert tuning.sample_iql_params(optuna.trial.FixedTrial(first), 2, 1, {})["policy_kwargs"] == {"net_arch": [256, 256]}
    assert tuning.zoo_params({"beta": 10.0, "policy_kwargs": {"net_arch": [64, 64]}}) == [
        "beta:10.0",
        "policy_kwargs:dict(net_arch=[64,64])",
    ]
    # as rl-zoo evaluates -params back: torch.nn classes by their name in nn (a repr would be "<class '...'>")
    assert tuning.zoo_params({"policy_kwargs": {"activation_fn": th.nn.Tanh}}) == ["policy_kwargs:dict(activation_fn=nn.Tanh)"]


def test_an_offline_study_reports_normalized_scores_counted_in_updates(maze_root, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    zoo.main(["train", "--dataset", MAZE_ID, "--optimize", "--n-trials", "3", "-f", str(tmp_path / "logs"),
              "--storage", storage, "--study-name", "offline", "--pruner", "none", *STUDY, *STUDY_PARAMS])  # fmt: skip
    study = optuna.load_study(study_name="offline", storage=storage)
    trials = study.trials
    assert len(trials) == 3 and all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials)
    # The first trial is the dataset's preset (the paper's AntMaze values).
    assert trials[0].params == tuning.preset_trial(preset_arguments(MAZE_ID))
    for trial in trials:
        # two evaluations, after 2 and 4 updates, reported at their numbers as rl-zoo does (its pruners count them);
        # the objective is their mean (fewer than OBJECTIVE_LAST_EVALUATIONS)
        assert sorted(trial.intermediate_values) == [1, 2] and trial.user_attrs["evaluation_timesteps"] == [2, 4]
        assert trial.value == pytest.approx(sum(trial.intermediate_values.values()) / 2)
    output = capsys.readouterr().out
    assert f"Train the best trial ({study.best_trial.number}," in output
    command = output.split("again:\n")[1].splitlines()[0]
    assert command.startswith(f"python -m sb3_iql.zoo train --dataset {MAZE_ID} --seed 3 -params offline_steps:4 ")
    assert "cannot write the configuration's Python learning-rate schedule" not in output  # the preset's is constant


def test_trial_zero_is_the_preset_even_outside_the_search_ranges():
    preset = {"expectile": 0.97, "beta": 0.3, "learning_rate": 3e-4, "batch_size": 32, "net_arch": "8x4", "dropout": 0.2}
    study = optuna.create_study(sampler=tuning.PresetFirstSampler(optuna.samplers.RandomSampler(seed=0), preset))
    first, second = study.ask(), study.ask()
    arguments = tuning.sample_iql_params(first, 2, 1, {"preset": preset})
    assert first.params == preset  # before, batch size 32 raised "'32' not in (64, 128, 256, 512)" and ended the study
    assert arguments["policy_kwargs"] == {"net_arch": [8, 4]} and arguments["dropout"] == 0.2
    drawn = tuning.sample_iql_params(second, 2, 1, {"preset": preset})
    assert 0.5 <= drawn["expectile"] <= 0.97 and 0.3 <= drawn["beta"] <= 20.0
    assert tuning.preset_trial({"policy_kwargs": {"net_arch": [8, 4]}})["net_arch"] == "8x4"  # not "medium"
    linear = tuning.preset_trial({"policy_kwargs": {"net_arch": []}})["net_arch"]  # "" failed int() before
    assert tuning.convert_iql_params({**preset, "net_arch": linear})["policy_kwargs"] == {"net_arch": []}


def test_a_study_resumed_with_other_params_or_the_same_seed_keeps_its_choices_and_draws_new_trials(maze_root, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = ["train", "--dataset", MAZE_ID, "--optimize", "--n-trials", "2", "-f", str(tmp_path / "logs"),
               "--storage", storage, "--study-name", "resumed", "--pruner", "none", *STUDY, *STUDY_PARAMS]  # fmt: skip
    zoo.main([*command, "batch_size:32"])  # the preset's batch size widens the study's choices
    with pytest.warns(UserWarning, match=r"The search keeps the study's ranges and choices"):
        zoo.main(command)  # every trial failed with Optuna's "does not support dynamic value space" before
    trials = optuna.load_study(study_name="resumed", storage=storage).trials
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert trials[2].params != trials[1].params, "the same --seed drew the first run's trials again"
    with pytest.raises(SystemExit, match=r"sb3_iql.zoo: error: batch_size must be an integer >= 1, got 0"):
        zoo.main([("refused" if item == "resumed" else item) for item in [*command, "batch_size:0"]])
    assert "refused" not in optuna.get_all_study_names(storage), "trial 0 failed and stayed failed in it before"


def test_a_study_of_a_configuration_file_keeps_its_callback_and_envs_and_trains_it_again(maze_root, tmp_path, capsys):
    """Trials ran without the file's callback and with one env; the printed command swapped the file for the
    dataset's preset (another policy, reward transform and policy extraction)."""
    conf_file, checkpoints = tmp_path / "conf.yml", tmp_path / "checkpoints"
    callback = {"stable_baselines3.common.callbacks.CheckpointCallback": {"save_freq": 2, "save_path": str(checkpoints)}}
    configuration = {"policy": "MultiInputPolicy", "n_timesteps": 0, "offline_dataset": MAZE_ID, "offline_steps": 4,
                     "n_envs": 2, "callback": callback}  # fmt: skip
    conf_file.write_text(yaml.safe_dump({MAZE_ENV_ID: configuration}))
    storage = f"sqlite:///{tmp_path / 'conf.db'}"
    zoo.main(["train", "--conf-file", str(conf_file), "--env", MAZE_ENV_ID, "--optimize", "--n-trials", "1",
              "--storage", storage, "--study-name", "conf", "-f", str(tmp_path / "logs"), *STUDY])  # fmt: skip
    assert len(list(checkpoints.glob("*.zip"))) == 2  # after 2 and 4 updates of the trial
    command = shlex.split(capsys.readouterr().out.split("again:\n")[1].splitlines()[0])
    assert command[3:8] == ["train", "--conf-file", str(conf_file), "--env", MAZE_ENV_ID] and "--dataset" not in command
    zoo.main([*command[3:], "-f", str(tmp_path / "retrain"), "--num-threads", "1", "--eval-episodes", "1"])
    model = IQL.load(tmp_path / "retrain" / "iql" / f"{MAZE_ENV_ID}_1" / f"{MAZE_ENV_ID}.zip")
    assert isinstance(model.policy, MultiInputPolicy) and model.reward_transform is None and model.n_envs == 2


def test_a_fine_tuning_study_evaluates_the_online_phase(maze_root, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'finetune.db'}"
    zoo.main(["train", "--dataset", MAZE_ID, "--finetune", "-n", "6", "--optimize", "--n-trials", "1", "--storage", storage,
              "--study-name", "finetune", "-f", str(tmp_path / "logs"), *STUDY, *STUDY_PARAMS])  # fmt: skip
    (trial,) = optuna.load_study(study_name="finetune", storage=storage).trials
    # 4 offline updates, then evaluations after 3 and 6 online steps (num_timesteps goes on from the offline phase)
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs["evaluation_timesteps"] == [7, 10]
    # trained again as it was: fine-tuning, 6 online steps, the given -params and the trial's network
    command = capsys.readouterr().out.split("again:\n")[1].splitlines()[0]
    assert f"train --dataset {MAZE_ID} --finetune -n 6 --seed 3 -params offline_steps:4 " in command
    assert "policy_kwargs:dict(net_arch=" in command


def test_trials_keep_the_preset_s_network_settings_and_schedule_also_trained_again_by_id(maze_root, tmp_path, capsys):
    presets, storage = tmp_path / "presets.yml", f"sqlite:///{tmp_path / 'id.db'}"
    presets.write_text(f"{MAZE_ID}:\n  policy: MlpPolicy\n  n_timesteps: 0\n  offline_steps: 4\n  learning_rate: lin_1e-3\n")
    common = ["--dataset", MAZE_ID, "--presets", str(presets), "--storage", storage, "--study-name", "id", *STUDY,
              "-params", "policy_kwargs:dict(normalize_observations=True)"]  # fmt: skip
    zoo.main(["train", *common, "--optimize", "--n-trials", "2", "-f", str(tmp_path / "logs")])
    trials = optuna.load_study(study_name="id", storage=storage).trials
    assert trials[0].params["learning_rate"] == 1e-3  # the preset's schedule starts there (was IQL's 3e-4)
    command = shlex.split(capsys.readouterr().out.split("again:\n")[1].splitlines()[0])
    assert any(word.startswith("learning_rate:'lin_") for word in command), command
    assert any(word.startswith("policy_kwargs:dict(normalize_observations=True,") for word in command), command
    zoo.main(["train", *common, "--trial-id", "1", "-f", str(tmp_path / "retrain")])
    model = IQL.load(tmp_path / "retrain" / "iql" / f"{MAZE_ENV_ID}_1" / f"{MAZE_ENV_ID}.zip")
    learning_rate = trials[1].params["learning_rate"]
    assert model.lr_schedule(1.0) == pytest.approx(learning_rate) and model.lr_schedule(0.5) == pytest.approx(
        learning_rate / 2
    )
    expected_net_arch = tuning.net_arch_widths(trials[1].params["net_arch"])
    kwargs = model.policy_kwargs  # rl-zoo's own --trial-id kept net_arch only
    assert kwargs["normalize_observations"] is True and kwargs["net_arch"] == expected_net_arch, kwargs


def test_a_trial_s_arguments_keep_the_run_s_network_settings_and_schedule():
    from rl_zoo3.utils import SimpleLinearSchedule
    from stable_baselines3.common.utils import LinearSchedule

    trial = tuning.convert_iql_params({**tuning.preset_trial({}), "learning_rate": 5e-4, "net_arch": "small"})
    raw = zoo._as_trained(
        {"policy_kwargs": "dict(normalize_observations=True)", "learning_rate": "linear_1e-3"}, trial, raw=True
    )
    assert eval(raw["policy_kwargs"]) == {"normalize_observations": True, "net_arch": [64, 64]}  # as rl-zoo evaluates it
    assert raw["learning_rate"] == "lin_0.0005"  # rl-zoo reads any name_X as linear
    linear = zoo._as_trained({"learning_rate": SimpleLinearSchedule(1e-3)}, trial)["learning_rate"]
    assert isinstance(linear, SimpleLinearSchedule) and linear(0.5) == pytest.approx(2.5e-4)
    python_schedule = LinearSchedule(1e-3, 1e-4, 1.0)  # from a Python --conf-file
    scaled = zoo._as_trained({"learning_rate": python_schedule}, trial)["learning_rate"]
    assert scaled(1.0) == pytest.approx(5e-4) and scaled(0.0) == pytest.approx(5e-5)
    assert tuning.preset_trial({"learning_rate": python_schedule})["learning_rate"] == pytest.approx(1e-3)
    assert zoo._as_trained({"learning_rate": 1e-3}, trial)["learning_rate"] == 5e-4


def test_two_workers_share_one_study_and_the_best_trial_trains_again(maze_root, tmp_path):
    storage, logs = f"sqlite:///{tmp_path / 'shared.db'}", tmp_path / "logs"
    workers = [worker(storage, "shared", logs, "--max-total-trials", "6", *STUDY_PARAMS) for _ in range(2)]
    outputs = [finish(process) for process in workers]
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.trials
    # no trial lost or run twice: trials numbered 0..n-1, each finished once, by one of the two workers; rl-zoo counts
    # finished trials before each worker starts one, so racing workers may run one trial more than the 6 asked for
    # (its own comment in ExperimentManager.hyperparameters_optimization)
    assert [trial.number for trial in trials] == list(range(len(trials))) and 6 <= len(trials) <= 6 + 1
    assert all(trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for trial in trials)
    workers_seen = {trial.user_attrs["worker"] for trial in trials}
    assert len(workers_seen) == 2, workers_seen
    # the preset ran once, as trial 0, although both workers opened the study at the same time (enqueueing it was a
    # race: both workers enqueued it now and then)
    preset = tuning.preset_trial(preset_arguments(MAZE_ID))
    assert trials[0].params == preset and sum(trial.params == preset for trial in trials) == 1
    # the printed command trains the best trial's settings again
    best = study.best_trial
    command = next(output.split("again:\n")[1].splitlines()[0] for output in outputs if "again:\n" in output)
    retrain = [*shlex.split(command)[3:], "-f", str(tmp_path / "retrain"), "--num-threads", "1", "--eval-episodes", "1"]
    zoo.main(retrain)
    model = IQL.load(tmp_path / "retrain" / "iql" / f"{MAZE_ENV_ID}_1" / f"{MAZE_ENV_ID}.zip")
    expected = tuning.convert_iql_params(best.params)
    assert (model.expectile, model.beta, model.batch_size) == (expected["expectile"], expected["beta"], expected["batch_size"])
    assert model.lr_schedule(1.0) == pytest.approx(expected["learning_rate"]) and model.num_timesteps == 4
    assert model.policy.net_arch == expected["policy_kwargs"]["net_arch"]


def has_heartbeat(database: pathlib.Path, trial_id: int) -> bool:
    """:return: whether the trial's heartbeat thread has written its first heartbeat in this SQLite study.

    Optuna never fails a RUNNING trial without a heartbeat row: a worker killed before its heartbeat thread wrote one
    (a loaded machine) leaves its trial RUNNING for good. Optuna has no public reader of heartbeats, hence the table.
    """
    with closing(sqlite3.connect(database)) as connection:
        query = "SELECT 1 FROM trial_heartbeats WHERE trial_id = ?"
        return connection.execute(query, (trial_id,)).fetchone() is not None


def test_a_worker_killed_in_a_trial_leaves_the_study_usable(maze_root, tmp_path):
    storage, logs = f"sqlite:///{tmp_path / 'killed.db'}", tmp_path / "logs"
    # A long first trial (the preset: 256x256, 1M updates): the worker is killed while it trains.
    long_trial = ["--n-trials", "1", "--heartbeat-interval", "1", "-params", "offline_steps:1000000"]
    victim = worker(storage, "killed", logs, *long_trial)
    # Training once every parameter is sampled: killed between two suggestions, the trial would be retried with
    # the parameters recorded so far and sample the others afresh.
    sampled = set(tuning.preset_trial(preset_arguments(MAZE_ID)))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name="killed", storage=storage).trials
        except KeyError:  # the study is not created yet
            trials = []
        running = trials and trials[0].state == optuna.trial.TrialState.RUNNING
        if running and sampled <= set(trials[0].params) and has_heartbeat(tmp_path / "killed.db", trials[0]._trial_id):
            break
        time.sleep(0.5)
    else:
        victim.kill()
        pytest.fail(f"the first trial never started with a heartbeat: {victim.communicate()[0]}")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    time.sleep(4)  # past the grace period (3 heartbeats of 1 s)
    # The next worker fails the dead trial, runs it again (as a new trial), then its own trials.
    finish(worker(storage, "killed", logs, "--n-trials", "2", "--heartbeat-interval", "1", *STUDY_PARAMS))
    trials = optuna.load_study(study_name="killed", storage=storage).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    retried = [trial for trial in trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial) == 0]
    assert len(retried) == 1 and retried[0].params == trials[0].params
    assert sum(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials) == 2


def postgres_binary(name: str) -> str | None:
    """:return: a PostgreSQL server program on the PATH or where Debian's packages put it, None if absent"""
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own on 127.0.0.1 (skipped without the server binaries or psycopg2)."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's server is not installed (initdb, pg_ctl)")
    as_user: list[str] = []
    folder = tempfile.mkdtemp(prefix="sb3_iql_postgres_")
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as its own system user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = os.path.join(folder, "data")
    subprocess.run([*as_user, initdb, "-D", data, "-U", "postgres", "--auth=trust"], check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    start = [*as_user, pg_ctl, "-D", data, "-o", options, "-l", os.path.join(folder, "log"), "-w", "start"]
    subprocess.run(start, check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(maze_root, tmp_path, postgres_url):
    workers = [worker(postgres_url, "postgres", tmp_path / "logs", "--max-total-trials", "4", *STUDY_PARAMS) for _ in range(2)]
    for process in workers:
        finish(process)
    trials = optuna.load_study(study_name="postgres", storage=postgres_url).trials
    # rl-zoo counts finished trials before each worker starts one, so racing workers may run up to
    # max_total_trials + (workers - 1) trials (its own comment in ExperimentManager.hyperparameters_optimization)
    assert [trial.number for trial in trials] == list(range(len(trials))) and 4 <= len(trials) <= 4 + 1
    assert all(trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for trial in trials)
    assert len({trial.user_attrs["worker"] for trial in trials}) == 2


def test_a_dataset_without_preset_can_be_optimised_too(maze_root, tmp_path):
    from sb3_iql.datasets import make_pointmaze_dataset

    dataset_id = "mine/maze/umaze-stitch-v0"  # no preset matches this namespace
    make_pointmaze_dataset("umaze", stitch=True, n_steps=600, n_reference_episodes=1, dataset_id=dataset_id)
    storage = f"sqlite:///{tmp_path / 'mine.db'}"
    with pytest.warns(UserWarning, match="No IQL preset"):
        zoo.main(["train", "--dataset", dataset_id, "--optimize", "--n-trials", "2", "--storage", storage,
                  "--study-name", "mine", "-f", str(tmp_path / "logs"), *STUDY, *STUDY_PARAMS])  # fmt: skip
    trials = optuna.load_study(study_name="mine", storage=storage).trials
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    # the first trial is IQL's own defaults (expectile 0.7, beta 3), the configuration such a dataset trains with
    assert (trials[0].params["expectile"], trials[0].params["beta"]) == (0.7, 3.0)


@pytest.mark.parametrize("error", ["integrity", "operational", "programming"])
def test_a_worker_that_loses_the_race_to_create_the_tables_opens_the_storage_again(monkeypatch, error):
    import sqlalchemy

    raised = {
        "integrity": sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")),
        "operational": sqlalchemy.exc.OperationalError("CREATE TABLE", {}, Exception("table studies already exists")),
        "programming": sqlalchemy.exc.ProgrammingError("CREATE TYPE", {}, Exception('type "studydirection" exists')),
    }[error]
    calls = []

    def database_storage(url: str, heartbeat_interval: int) -> str:
        calls.append(url)
        if len(calls) == 1:
            raise raised
        return "storage"

    monkeypatch.setattr(tuning, "_database_storage", database_storage)
    monkeypatch.setattr(tuning.time, "sleep", lambda seconds: None)
    assert tuning.make_storage("sqlite:///study.db") == "storage" and len(calls) == 2
