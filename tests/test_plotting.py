"""Learning curves from the logs of real tiny runs: evaluations.npz, progress.csv, reference scores, PNG output."""

import pathlib
from collections import OrderedDict
from collections.abc import Iterator

import gymnasium as gym
import matplotlib.image
import numpy as np
import pytest
import yaml
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from toy_data import LINE_ENV_ID, LineEnv, bad_policy, good_policy, rollout_episodes, write_dataset

from sb3_iql import IQL
from sb3_iql.callbacks import NormalizedEvalCallback
from sb3_iql.plotting import PANEL_HEIGHT, PANEL_WIDTH, find_run_folder, load_run, main, plot_run

REF_MIN, REF_MAX = -16.0, -2.0
DATASET_ID = "test/line/plots-v0"
UPDATES, EVAL_FREQ, LOG_INTERVAL, EPISODES = 30, 10, 10, 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 100


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, pathlib.Path]]:
    """Two tiny offline runs: one with NormalizedEvalCallback, one with SB3's EvalCallback and an rl-zoo config."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
        env = gym.make(LINE_ENV_ID)
        episodes = rollout_episodes(env, [good_policy, bad_policy], n_episodes=10)
        dataset = write_dataset(DATASET_ID, episodes, env=env, ref_min_score=REF_MIN, ref_max_score=REF_MAX)
        folders = {"scored": root / "logs" / "scored", "plain": root / "logs" / "plain"}
        for name, folder in folders.items():
            model = IQL("MlpPolicy", LineEnv(), offline_dataset=dataset, batch_size=16, policy_kwargs=dict(net_arch=[16]))
            model.set_logger(configure(str(folder), ["csv"]))
            callback_class = NormalizedEvalCallback if name == "scored" else EvalCallback
            callback = callback_class(Monitor(LineEnv()), eval_freq=EVAL_FREQ, n_eval_episodes=EPISODES, log_path=str(folder))
            model.learn_offline(UPDATES, callback=callback, log_interval=LOG_INTERVAL)
        # What rl-zoo saves next to a run: the hyperparameters, offline_dataset included.
        (folders["plain"] / LINE_ENV_ID).mkdir()
        config = OrderedDict([("offline_dataset", DATASET_ID), ("policy", "MlpPolicy")])
        (folders["plain"] / LINE_ENV_ID / "config.yml").write_text(yaml.dump(config))
        yield folders


def test_load_run_reads_evaluations_losses_and_reference_scores(runs):
    run = load_run(runs["scored"])
    assert run.timesteps.tolist() == [10, 20, 30] and run.returns.shape == (3, EPISODES)
    assert run.reference_scores == (REF_MIN, REF_MAX)  # stored by NormalizedEvalCallback
    np.testing.assert_allclose(run.normalized_scores, 100 * (run.returns - REF_MIN) / (REF_MAX - REF_MIN))
    updates, value_loss = run.progress["train/n_updates"], run.progress["train/value_loss"]
    assert updates[np.isfinite(updates)].tolist() == [10, 20, 30]
    assert np.isfinite(value_loss).sum() == UPDATES // LOG_INTERVAL and (value_loss[np.isfinite(value_loss)] >= 0).all()

    given = load_run(runs["scored"], ref_min_score=-1.0, ref_max_score=0.0)  # given scores replace the stored ones
    np.testing.assert_allclose(given.normalized_scores, 100 * (run.returns + 1.0))


def test_evaluations_logged_without_timesteps_are_placed_at_their_rows(tmp_path):
    (tmp_path / "progress.csv").write_text("eval/mean_reward,train/value_loss\n-5.0,0.1\n,0.05\n-3.0,0.02\n")
    run = load_run(tmp_path, ref_min_score=REF_MIN, ref_max_score=REF_MAX)
    assert run.timesteps.tolist() == [0, 2] and run.returns.ravel().tolist() == [-5.0, -3.0]


def test_reference_scores_come_from_the_dataset_or_the_zoo_config(runs):
    from_config = load_run(runs["plain"])  # EvalCallback stores no scores: the run's config names the dataset
    assert (from_config.reference_scores, from_config.dataset_id) == ((REF_MIN, REF_MAX), DATASET_ID)
    (runs["plain"] / LINE_ENV_ID / "config.yml").rename(runs["plain"] / "config.bak")
    try:
        assert load_run(runs["plain"]).normalized_scores is None  # nothing to normalize with: returns are plotted
        assert load_run(runs["plain"], dataset=DATASET_ID).reference_scores == (REF_MIN, REF_MAX)
    finally:
        (runs["plain"] / "config.bak").rename(runs["plain"] / LINE_ENV_ID / "config.yml")
    with pytest.raises(ValueError, match="both"):
        load_run(runs["plain"], ref_min_score=1.0)


def test_an_evaluations_file_caught_mid_write_is_named_in_one_line(tmp_path):
    for name, content in [("empty", b""), ("cut", b"PK\x03\x04 half a zip")]:  # np.savez rewrites it in place
        (tmp_path / name).mkdir()
        (tmp_path / name / "evaluations.npz").write_bytes(content)
        with pytest.raises(ValueError, match=r"evaluations.npz cannot be read .*: a run writing it at this moment"):
            load_run(tmp_path / name)  # EOFError, BadZipFile: tracebacks of the command line before


def test_plot_run_writes_one_panel_per_curve(runs, tmp_path):
    output = plot_run(runs["scored"], tmp_path / "curves.png")
    assert output.read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = matplotlib.image.imread(output).shape
    # evaluation + value, Q and actor losses
    assert (width, height) == (round(4 * PANEL_WIDTH * DPI), round(PANEL_HEIGHT * DPI))
    plain = plot_run(runs["plain"])
    assert plain == runs["plain"] / "curves.png" and plain.read_bytes()[:8] == PNG_SIGNATURE


def test_command_line(runs, tmp_path, capsys):
    output = tmp_path / "out.png"
    main([str(runs["scored"]), "-o", str(output), "--ref-min", "-20", "--ref-max", "0", "--title", "tiny"])
    assert output.read_bytes()[:8] == PNG_SIGNATURE and f"Saved {output}" in capsys.readouterr().out
    # The logs folder holds two runs: ask which one.
    with pytest.raises(SystemExit) as error:
        main([str(runs["scored"].parent), "-o", str(output)])
    assert error.value.code == 1 and "Several runs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        main([str(tmp_path / "missing")])
    assert error.value.code == 1 and "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "one" / "iql" / "Env_1").mkdir(parents=True)
    (tmp_path / "one" / "iql" / "Env_1" / "progress.csv").write_text("train/n_updates\n1\n")
    assert find_run_folder(tmp_path / "one") == tmp_path / "one" / "iql" / "Env_1"
    with pytest.raises(FileNotFoundError, match=r"No evaluations\.npz"):
        find_run_folder(tmp_path / "empty")


def test_the_path_printed_is_the_png_written(runs, tmp_path, capsys):
    """matplotlib adds .png to a name without one: "Saved" named a file that did not exist (a folder too)."""
    main([str(runs["scored"]), "-o", str(tmp_path / "curves_without_suffix")])
    assert f"Saved {tmp_path / 'curves_without_suffix.png'}" in capsys.readouterr().out
    (tmp_path / "folder").mkdir()
    assert plot_run(runs["scored"], tmp_path / "folder") == tmp_path / "folder" / "curves.png"
    assert (tmp_path / "folder" / "curves.png").read_bytes()[:8] == PNG_SIGNATURE


def test_empty_or_partly_missing_logs(tmp_path):
    np.savez(tmp_path / "evaluations.npz", timesteps=np.zeros(0), results=np.zeros((0, 3)))  # a reshape error before
    (tmp_path / "progress.csv").write_text("train/n_updates,train/value_loss,train/critic_loss,train/actor_loss\n")
    with pytest.raises(ValueError, match=r"no evaluations and no .* values"):
        plot_run(tmp_path)
    (tmp_path / "progress.csv").write_text("train/n_updates,train/value_loss\n10,0.5\n")
    assert load_run(tmp_path).returns is None and plot_run(tmp_path).is_file()  # the losses, without evaluations yet
    (tmp_path / "evaluations.npz").unlink()
    np.savez(tmp_path / "evaluations.npz", timesteps=np.array([5, 10]), results=np.array([[1.0, np.nan], [2.0, 4.0]]))
    plot_run(tmp_path, ref_min_score=0.0, ref_max_score=10.0)  # an episode's NaN return leaves the others plotted
