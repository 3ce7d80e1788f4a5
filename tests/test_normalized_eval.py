"""NormalizedEvalCallback: D4RL-style normalized scores next to SB3's evaluation figures."""

import io
import pathlib
from collections.abc import Iterator

import gymnasium as gym
import minari
import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback, ProgressBarCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv
from toy_data import LINE_ENV_ID, LineEnv, bad_policy, good_policy, rollout_episodes, write_dataset

from sb3_iql import IQL, evaluate
from sb3_iql.callbacks import NormalizedEvalCallback, UpdatesProgressBarCallback, find_eval_callback
from sb3_iql.plotting import read_progress

REF_MIN, REF_MAX = -16.0, -2.0
SCORED_ID, UNSCORED_ID = "test/line/scored-v0", "test/line/unscored-v0"


@pytest.fixture(scope="module")
def line_datasets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[minari.MinariDataset, minari.MinariDataset]]:
    """The same episodes with and without reference scores."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path_factory.mktemp("minari")))
        env = gym.make(LINE_ENV_ID)
        episodes = rollout_episodes(env, [good_policy, bad_policy], n_episodes=10)
        scored = write_dataset(SCORED_ID, episodes, env=env, ref_min_score=REF_MIN, ref_max_score=REF_MAX)
        yield scored, write_dataset(UNSCORED_ID, episodes, env=env)


def tiny_model(dataset: minari.MinariDataset, folder: pathlib.Path, **kwargs) -> IQL:
    kwargs = dict(batch_size=16, policy_kwargs=dict(net_arch=[16]), seed=0, **kwargs)
    model = IQL("MlpPolicy", LineEnv(), offline_dataset=dataset, **kwargs)
    model.set_logger(configure(str(folder), ["csv"]))
    return model


def test_scores_from_the_dataset_are_logged_in_the_evaluation_row(line_datasets, tmp_path):
    scored, _ = line_datasets
    model = tiny_model(scored, tmp_path)
    callback = NormalizedEvalCallback(dataset=scored, eval_freq=4, n_eval_episodes=2, log_path=str(tmp_path), verbose=0)
    model.learn_offline(12, callback=callback, log_interval=6)

    expected = 100 * (callback.last_mean_reward - REF_MIN) / (REF_MAX - REF_MIN)
    assert callback.last_normalized_score == pytest.approx(expected)
    assert callback.reference_scores == (REF_MIN, REF_MAX)
    evaluations = np.load(tmp_path / "evaluations.npz")
    assert evaluations["timesteps"].tolist() == [4, 8, 12]
    np.testing.assert_allclose(
        evaluations["normalized_scores"], 100 * (evaluations["results"].mean(axis=1) - REF_MIN) / (REF_MAX - REF_MIN)
    )
    assert (float(evaluations["ref_min_score"]), float(evaluations["ref_max_score"])) == (REF_MIN, REF_MAX)
    # One CSV row per evaluation holds the return and its score, so curves line up.
    progress = read_progress(tmp_path / "progress.csv")
    rows = np.isfinite(progress["eval/mean_reward"])
    assert rows.sum() == 3 and np.isfinite(progress["eval/normalized_score"][rows]).all()
    np.testing.assert_allclose(progress["eval/normalized_score"][rows], evaluations["normalized_scores"])
    # The progress bar reads the attribute.
    assert UpdatesProgressBarCallback(callback)._latest_evaluation()["eval_score"] == round(expected, 1)


def test_the_environment_and_scores_default_to_the_model_dataset(line_datasets, tmp_path):
    scored, unscored = line_datasets
    callback = NormalizedEvalCallback(Monitor(LineEnv()), eval_freq=3, n_eval_episodes=1, verbose=0)
    tiny_model(scored, tmp_path).learn_offline(3, callback=callback)
    assert callback.reference_scores == (REF_MIN, REF_MAX)
    expected = 100.0 * (callback.last_mean_reward - REF_MIN) / (REF_MAX - REF_MIN)
    assert callback.last_normalized_score == pytest.approx(expected)

    # Given scores win over the dataset's; the evaluation environment is recovered from the dataset.
    given = NormalizedEvalCallback(dataset=scored, ref_min_score=0.0, ref_max_score=10.0, eval_freq=3, n_eval_episodes=1)
    assert given.eval_env.get_attr("spec")[0].id == LINE_ENV_ID
    tiny_model(scored, tmp_path).learn_offline(3, callback=given)
    assert given.last_normalized_score == pytest.approx(10.0 * given.last_mean_reward)

    # Without reference scores it is a plain EvalCallback.
    plain = NormalizedEvalCallback(dataset=unscored, eval_freq=3, n_eval_episodes=1, log_path=str(tmp_path / "plain"))
    tiny_model(unscored, tmp_path).learn_offline(3, callback=plain)
    assert plain.last_normalized_score is None and np.isfinite(plain.last_mean_reward)
    assert "normalized_scores" not in np.load(tmp_path / "plain" / "evaluations.npz").files


def test_replacing_an_eval_callback_keeps_its_settings(line_datasets, tmp_path):
    scored, _ = line_datasets
    original = EvalCallback(Monitor(LineEnv()), n_eval_episodes=7, eval_freq=11, log_path=str(tmp_path), deterministic=False)
    callback = NormalizedEvalCallback.from_eval_callback(original, scored)
    assert (callback.n_eval_episodes, callback.eval_freq, callback.deterministic) == (7, 11, False)
    assert callback.log_path == original.log_path and callback.eval_env is original.eval_env
    assert callback.reference_scores == (REF_MIN, REF_MAX)


def test_errors():
    with pytest.raises(ValueError, match="both ref_min_score and ref_max_score"):
        NormalizedEvalCallback(Monitor(LineEnv()), ref_min_score=0.0)
    with pytest.raises(ValueError, match="must exceed"):
        NormalizedEvalCallback(Monitor(LineEnv()), ref_min_score=1.0, ref_max_score=1.0)
    with pytest.raises(ValueError, match="must exceed"):  # reversed
        NormalizedEvalCallback(Monitor(LineEnv()), ref_min_score=5.0, ref_max_score=1.0)
    with pytest.raises(ValueError, match="needs an eval_env or a dataset"):
        NormalizedEvalCallback()


def test_an_evaluation_environment_of_other_actions_is_refused_before_any_episode(line_datasets, tmp_path):
    model = tiny_model(line_datasets[0], tmp_path)  # LineEnv: actions in [-2, 2]
    narrower = gym.wrappers.RescaleAction(LineEnv(), np.float32(-1), np.float32(1))  # predict's 1.9 would mean 0.95
    with pytest.raises(ValueError, match=r"takes actions Box\(-1.0, 1.0, \(1,\).*the model's are Box\(-2.0, 2.0"):
        evaluate(model, narrower, n_eval_episodes=1)
    discrete = LineEnv(discrete=True)  # a failure inside the env's step before
    with pytest.raises(ValueError, match=r"takes actions Discrete\(3\)"):
        evaluate(model, discrete, n_eval_episodes=1)
    with pytest.raises(ValueError, match=r"takes actions Discrete\(3\)"):
        model.learn_offline(2, callback=NormalizedEvalCallback(Monitor(discrete), ref_min_score=0.0, ref_max_score=1.0))


def test_a_dataset_s_unusable_reference_scores_are_refused_when_the_callback_is_made(minari_root):
    env = gym.make(LINE_ENV_ID)
    episodes = rollout_episodes(env, [good_policy], n_episodes=2)
    flat = write_dataset("test/line/flat-v0", episodes, env=env, ref_min_score=-2.0, ref_max_score=-2.0)
    with pytest.raises(ValueError, match="ref_max_score must exceed ref_min_score"):  # at the first evaluation before
        NormalizedEvalCallback(dataset=flat)
    with pytest.raises(ValueError, match=r"reference scores must be finite numbers, got ref_min 0\.0 and ref_max inf"):
        NormalizedEvalCallback(Monitor(env), ref_min_score=0.0, ref_max_score=float("inf"))  # scores of -0.0 before


class TerminalStream(io.StringIO):
    """A captured stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class StopAfter(BaseCallback):
    def __init__(self, n_updates: int):
        super().__init__()
        self.n_updates = n_updates

    def _on_step(self) -> bool:
        return self.n_calls < self.n_updates


def test_progress_bar_prints_plain_lines_where_the_output_is_not_a_terminal(line_datasets, tmp_path, capsys):
    scored, _ = line_datasets
    model = tiny_model(scored, tmp_path)
    stream = io.StringIO()
    model.learn_offline(400, callback=UpdatesProgressBarCallback(file=stream))
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 20  # every 5%, the last one at 100%
    assert "20/400" in lines[0] and "400/400" in lines[-1] and "upd/s" in lines[-1]
    # learn_offline(progress_bar=True) writes to sys.stderr, which pytest captures: no terminal either.
    model.learn_offline(200, progress_bar=True)
    assert len(capsys.readouterr().err.splitlines()) == 20
    # A stopped run ends with a line at the updates done.
    stream = io.StringIO()
    model.learn_offline(400, callback=[StopAfter(30), UpdatesProgressBarCallback(file=stream)])
    assert len(stream.getvalue().splitlines()) == 2 and "30/400" in stream.getvalue().splitlines()[-1]
    # learn(): one bar per phase (offline updates, then online steps), as before the phases shared their callbacks.
    stream = io.StringIO()
    tiny_model(scored, tmp_path, offline_steps=40).learn(
        60, callback=UpdatesProgressBarCallback(file=stream, line_percent=100)
    )
    assert [line.split("|")[-1].split()[0] for line in stream.getvalue().splitlines()] == ["40/40", "60/60"]


def test_sb3_s_own_progress_bar_counts_updates_offline_with_several_envs(line_datasets, tmp_path, capsys):
    from stable_baselines3.common.vec_env import DummyVecEnv

    scored, _ = line_datasets
    model = IQL("MlpPolicy", DummyVecEnv([LineEnv] * 3), offline_dataset=scored, batch_size=16, offline_steps=0)
    for callback in (ProgressBarCallback(), CallbackList([ProgressBarCallback()])):  # alone or in a CallbackList
        model.learn_offline(60, callback=callback)  # SB3's bar counts n_envs timesteps per step
        output = capsys.readouterr()
        last_line = (output.out + output.err).replace("\r", "\n").strip().splitlines()[-1]
        assert "60/60" in last_line, last_line


def test_progress_bar_is_sb3s_tqdm_bar_on_a_terminal(line_datasets, tmp_path):
    scored, _ = line_datasets
    assert isinstance(UpdatesProgressBarCallback(), ProgressBarCallback)
    evaluation = NormalizedEvalCallback(dataset=scored, eval_freq=100, n_eval_episodes=1)
    stream = TerminalStream()
    tiny_model(scored, tmp_path).learn_offline(300, callback=[evaluation, UpdatesProgressBarCallback(evaluation, stream)])
    output = stream.getvalue()
    assert "\r" in output and output.count("\n") == 1  # redrawn in place, closed once
    assert "300/300" in output.rsplit("\r", 1)[-1] and "eval_score=" in output
    assert find_eval_callback([CallbackList([StopAfter(50), CallbackList([evaluation])])]) is evaluation  # progress_bar=True
    # A stopped run: SB3's closing code shows the updates done.
    stream = TerminalStream()
    tiny_model(scored, tmp_path).learn_offline(300, callback=[StopAfter(50), UpdatesProgressBarCallback(file=stream)])
    assert "50/300" in stream.getvalue().rsplit("\r", 1)[-1]


class _ReportsSuccess(gym.Env):
    """Episodes of 5 steps; odd episodes report success at step 3 only, even ones never; ``report=False``: no key."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, report: bool = True):
        self.report, self.episode, self.t = report, -1, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        info = {"is_success": self.episode % 2 == 1 and self.t == 3} if self.report else {}
        return np.zeros(1, np.float32), 0.0, False, self.t == 5, info


class _ZeroPolicy:
    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        return np.zeros((len(observation), 1), np.float32), None


def test_evaluate_reports_the_success_rate_of_environments_that_report_success():
    result = evaluate(_ZeroPolicy(), _ReportsSuccess(), n_eval_episodes=4)
    assert result.success_rate == 0.5  # success at any step of the episode counts, not only at its end
    assert evaluate(_ZeroPolicy(), _ReportsSuccess(report=False), n_eval_episodes=4).success_rate is None
    for n_episodes in (0, 2.5):  # no score, not a NaN with NumPy's warnings
        with pytest.raises(ValueError, match="n_eval_episodes must be a whole number >= 1"):
            evaluate(_ZeroPolicy(), _ReportsSuccess(), n_eval_episodes=n_episodes)


def test_evaluate_s_first_episode_starts_at_the_seeded_reset_for_an_env_as_for_a_vec_env():
    def pendulum() -> gym.Env:  # random starts: the seed decides them
        return Monitor(gym.make("Pendulum-v1"))

    on_env = evaluate(_ZeroPolicy(), pendulum(), n_eval_episodes=2, seed=3).episode_returns
    on_vec_env = evaluate(_ZeroPolicy(), DummyVecEnv([pendulum]), n_eval_episodes=2, seed=3).episode_returns
    np.testing.assert_array_equal(on_env, on_vec_env)
    env = pendulum()
    env.reset(seed=3)
    first_return, done = 0.0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
        first_return, done = first_return + reward, terminated or truncated
    assert on_env[0] == pytest.approx(first_return)


def test_the_callback_counts_success_as_evaluate_does():
    callback = NormalizedEvalCallback(Monitor(_ReportsSuccess()), ref_min_score=0.0, ref_max_score=1.0)
    for _ in range(2):  # EvalCallback gives each evaluation a new buffer
        callback._is_success_buffer = []
        for episode in range(4):  # the mazes' key, true at one step in the middle of odd episodes
            for step in range(1, 6):
                info = {"success": episode % 2 == 1 and step == 3}
                callback._log_success_callback({"i": 0, "info": info, "done": step == 5}, {})
        assert callback._is_success_buffer == [False, True, False, True]
    callback._is_success_buffer = []  # an env that reports success only where it happens, as evaluate counts it
    for episode in range(4):
        for step in range(1, 6):
            info = {"is_success": True} if episode % 2 == 1 and step == 3 else {}
            callback._log_success_callback({"i": 0, "info": info, "done": step == 5}, {})
    assert callback._is_success_buffer == [False, True, False, True]
    silent = NormalizedEvalCallback(Monitor(_ReportsSuccess()), ref_min_score=0.0, ref_max_score=1.0)
    silent._is_success_buffer = []
    silent._log_success_callback({"i": 0, "info": {}, "done": True}, {})
    assert silent._is_success_buffer == []  # no key: no success rate, as EvalCallback
