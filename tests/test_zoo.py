"""rl-zoo3 with IQL, end to end on a tiny local PointMaze dataset: offline, offline then online, and enjoy."""

import pathlib
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
import yaml
from maze_data import MAZE_ENV_ID, MAZE_EPISODE_STEPS, MAZE_ID, MAZE_STEPS, tiny_maze_root
from toy_data import make_episode, write_dataset

from sb3_iql import IQL, HerReplayBuffer
from sb3_iql.datasets import ensure_dataset, make_pointmaze_dataset
from sb3_iql.iql import MultiInputPolicy
from sb3_iql.plotting import read_progress

zoo = pytest.importorskip("sb3_iql.zoo", reason="rl-zoo3 is not installed (pip install 'sb3_iql[zoo]')")

TINY = ["--seed", "0", "--num-threads", "1", "-params", "batch_size:16", "policy_kwargs:dict(net_arch=[16])"]


@pytest.fixture(scope="module")
def maze_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    yield from tiny_maze_root(tmp_path_factory)


def run_folder(logs: pathlib.Path, run: int = 1) -> pathlib.Path:
    return logs / "iql" / f"{MAZE_ENV_ID}_{run}"


def test_iql_is_registered_in_every_rl_zoo_table():
    zoo.register_iql()
    import rl_zoo3.enjoy
    import rl_zoo3.exp_manager
    import rl_zoo3.train

    for algos in (zoo.rl_zoo3.ALGOS, rl_zoo3.train.ALGOS, rl_zoo3.exp_manager.ALGOS, rl_zoo3.enjoy.ALGOS):
        assert algos["iql"] is IQL


def test_hyperparams_of_a_dataset_are_its_preset_keyed_by_its_environment(maze_root):
    hyperparams = zoo.zoo_hyperparams(MAZE_ID)
    assert list(hyperparams) == [MAZE_ENV_ID]
    entry = hyperparams[MAZE_ENV_ID]
    assert (entry["offline_dataset"], entry["expectile"], entry["beta"], entry["n_timesteps"]) == (MAZE_ID, 0.9, 10.0, 0)
    # The evaluation environment of the dataset: fixed goal cell "g", no new goal when reached.
    assert entry["env_kwargs"]["reset_target"] is False and entry["env_kwargs"]["maze_map"][1][1] == "g"
    # Another --env keeps its own construction.
    assert "env_kwargs" not in zoo.zoo_hyperparams(MAZE_ID, env_id="PointMaze_Medium-v3")["PointMaze_Medium-v3"]


def test_a_pixel_dataset_s_environment_keeps_its_renderer_as_an_env_wrapper(minari_root):
    from rl_zoo3.utils import get_wrapper_class

    pixel_id = "sb3_iql/pointmaze/umaze-stitch-pixels36-v0"
    dataset = ensure_dataset(pixel_id, n_steps=300)
    ((env_id, entry),) = zoo.zoo_hyperparams(pixel_id).items()
    assert entry["env_wrapper"] == [{"sb3_iql.datasets.pixels.PointMazePixels": {"size": 36}}]
    env = get_wrapper_class(entry)(gym.make(env_id, **entry["env_kwargs"]))  # as rl-zoo builds it
    assert env.observation_space == dataset.observation_space  # frames, not the state maze's Dict
    env.close()


def test_a_dataset_without_an_environment_takes_the_given_env(minari_root):
    env = gym.make("Pendulum-v1")
    episode = make_episode(
        0,
        [env.observation_space.sample() for _ in range(4)],
        [env.action_space.sample()] * 3,
        [0.0] * 3,
        [False] * 3,
        [False, False, True],
    )
    write_dataset("test/nospec/data-v0", [episode], observation_space=env.observation_space, action_space=env.action_space)
    assert list(zoo.zoo_hyperparams("test/nospec/data-v0", env_id="Pendulum-v1")) == ["Pendulum-v1"]
    with pytest.raises(ValueError, match="stores no environment spec: pass --env"):
        zoo.zoo_hyperparams("test/nospec/data-v0")


def test_train_needs_a_dataset_or_a_configuration(maze_root):
    with pytest.raises(SystemExit, match="needs --dataset"):
        zoo.main(["train", "--env", MAZE_ENV_ID])
    with pytest.raises(SystemExit, match="usage"):
        zoo.main(["fly"])


def test_help_lists_the_package_s_options_and_download_fetches_the_dataset_first(maze_root, monkeypatch, capsys):
    with pytest.raises(SystemExit):  # rl-zoo's --help exits
        zoo.main(["train", "--help"])
    ours = capsys.readouterr().out.split("sb3_iql.zoo options")[1].split("usage:")[0]
    for option in ("--dataset", "--download", "--finetune", "--presets", "--heartbeat-interval"):
        assert option in ours
    downloads = []

    def remote(dataset_id: str, download: bool = False):
        downloads.append((dataset_id, download))
        raise SystemExit("no network in the test")

    monkeypatch.setattr(zoo, "load_dataset", remote)
    for command in ("train", "enjoy"):
        with pytest.raises(SystemExit, match="no network"):  # before the preset reads the dataset
            zoo.main([command, "--dataset", "D4RL/antmaze/large-diverse-v1", "--download"])
    assert downloads == [("D4RL/antmaze/large-diverse-v1", True)] * 2


@pytest.mark.parametrize(
    "dataset, message",
    [("test/missing/none-v0", "'test/missing/none-v0' is not stored locally"), ("bad id", "Malformed dataset id 'bad id'")],
)
def test_a_missing_or_malformed_dataset_is_one_line(maze_root, tmp_path, dataset, message):
    with pytest.raises(SystemExit, match=rf"^sb3_iql.zoo: error: .*{message}"):  # a traceback before
        zoo.main(["train", "--dataset", dataset, "-f", str(tmp_path)])


def test_offline_training_then_enjoy(maze_root, tmp_path, capsys):
    logs, tensorboard = tmp_path / "logs", tmp_path / "tb"
    zoo.main(
        [
            *["train", "--dataset", MAZE_ID, "-f", str(logs), "-tb", str(tensorboard)],
            *["--eval-freq", "5", "--eval-episodes", "1", *TINY, "offline_steps:10"],
        ]
    )
    run = run_folder(logs)
    model = IQL.load(run / f"{MAZE_ENV_ID}.zip")
    # n_timesteps 0: learn(0) ran the offline updates only, with the preset's settings.
    assert (model._n_offline_updates, model._n_updates, model.num_timesteps) == (10, 10, 10)
    assert (model.expectile, model.beta, model.offline_dataset_ids) == (0.9, 10.0, [MAZE_ID])
    assert (run / "best_model.zip").is_file()

    evaluations = np.load(run / "evaluations.npz")
    assert evaluations["timesteps"].tolist() == [5, 10]  # evaluation frequency in updates
    ref_min, ref_max = float(evaluations["ref_min_score"]), float(evaluations["ref_max_score"])
    expected = 100 * (evaluations["results"].mean(axis=1) - ref_min) / (ref_max - ref_min)
    np.testing.assert_allclose(evaluations["normalized_scores"], expected)

    progress = read_progress(run / "progress.csv")
    assert np.nanmax(progress["train/n_updates"]) == 10 and np.isfinite(progress["train/value_loss"]).any()
    np.testing.assert_allclose(progress["eval/normalized_score"][np.isfinite(progress["eval/normalized_score"])], expected)
    assert list((tensorboard / MAZE_ENV_ID / "IQL_1").glob("events.out.tfevents.*"))

    config = yaml.load((run / MAZE_ENV_ID / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert dict(config)["offline_dataset"] == MAZE_ID
    capsys.readouterr()

    zoo.main(["enjoy", "--dataset", MAZE_ID, "-f", str(logs), "--no-render", "-n", str(MAZE_EPISODE_STEPS), *TINY[:4]])
    output = capsys.readouterr().out
    assert f"Loading {run / MAZE_ENV_ID}.zip" in output
    assert "1 Episodes" in output and f"Mean episode length: {MAZE_EPISODE_STEPS}.00" in output


@pytest.mark.parametrize("given", [["--env-kwargs", "continuing_task:True"], ["env_kwargs:dict(continuing_task=True)"]])
def test_given_env_kwargs_go_over_the_dataset_s_stored_ones(maze_root, tmp_path, given):
    """rl-zoo replaces the whole dict: the maze and its fixed goal were lost, and the scores normalised with the
    dataset's reference scores on the default maze with a random goal."""
    logs = tmp_path / "logs"
    options = given if given[0] == "--env-kwargs" else []
    params = given if not options else []
    zoo.main(["train", "--dataset", MAZE_ID, "-f", str(logs), "--eval-freq", "0", *options, *TINY, "offline_steps:2", *params])
    config = dict(yaml.load((run_folder(logs) / MAZE_ENV_ID / "config.yml").read_text(), Loader=yaml.UnsafeLoader))
    stored = zoo.zoo_hyperparams(MAZE_ID)[MAZE_ENV_ID]["env_kwargs"]
    assert config["env_kwargs"] == {**stored, "continuing_task": True} and stored["maze_map"][1][1] == "g"
    if options:  # rl-zoo's enjoy puts args.yml's in place of config.yml's: they held continuing_task alone
        args = yaml.load((run_folder(logs) / MAZE_ENV_ID / "args.yml").read_text(), Loader=yaml.UnsafeLoader)
        assert args["env_kwargs"] == config["env_kwargs"]


def test_given_eval_env_kwargs_go_over_the_dataset_s_stored_ones(maze_root, tmp_path, monkeypatch):
    evaluated = []
    monkeypatch.setattr(zoo.IQLExperimentManager, "create_callbacks", lambda self: evaluated.append(self.eval_env_kwargs))
    logs = tmp_path / "logs"
    zoo.main(["train", "--dataset", MAZE_ID, "-f", str(logs), "--eval-env-kwargs", "continuing_task:False", *TINY,
              "offline_steps:2"])  # fmt: skip
    stored = zoo.zoo_hyperparams(MAZE_ID)[MAZE_ENV_ID]["env_kwargs"]
    assert evaluated == [{**stored, "continuing_task": False}], "the dataset's maze and goal were dropped"


def test_only_this_package_s_value_errors_lose_their_traceback():
    try:
        IQL("MlpPolicy", gym.make("Pendulum-v1"), expectile=2.0)
    except ValueError as error:
        assert zoo._raised_by_this_package(error)
    try:
        int("not a number")  # an env's or rl-zoo's own: its traceback is kept
    except ValueError as error:
        assert not zoo._raised_by_this_package(error)


def test_user_mistakes_are_one_line_errors(maze_root, tmp_path):
    presets = tmp_path / "presets.yml"
    presets.write_text("default:\n  offline_steps: 100\n")
    conf = tmp_path / "conf.yml"
    conf.write_text(f"{MAZE_ENV_ID}:\n  policy: MultiInputPolicy\n  n_timesteps: 0\n")
    run = ["train", "-f", str(tmp_path / "logs"), "--eval-freq", "0"]
    for command, message in [
        (["--dataset", MAZE_ID, "-params", "offline_stepz:10"], r"Unknown hyperparameter 'offline_stepz' in -params \(did"),
        (["--dataset", MAZE_ID, "--presets", str(presets)], r"No entry of .*presets.yml applies to dataset .* keys: default"),
        (["--dataset", MAZE_ID, "--presets", str(tmp_path / "none.yml")], "No such file or directory"),
        (["--dataset", MAZE_ID, "--algo", "sac"], r"it trains IQL \(--algo iql\); use rl_zoo3 for --algo sac"),
        (["--dataset", MAZE_ID, "-params", "normalize:True"], "VecNormalize is not supported with offline data"),
        (["--conf-file", str(conf)], "--conf-file needs --env ENV_ID"),
        (["--conf-file", str(conf), "--env", "NotRegistered-v0"], "'NotRegistered-v0' is not registered: .*--gym-packages"),
        (["--conf-file", str(conf), "--env", MAZE_ENV_ID, "--gym-packages", "gymnasium_robotics"], "no offline_dataset and"),
    ]:
        with pytest.raises(SystemExit, match=rf"^sb3_iql.zoo: error: .*{message}"):  # tracebacks, or a silent no-op
            zoo.main([*run, *command])


def test_offline_only_evaluations_count_updates_with_several_envs(maze_root, tmp_path):
    # rl-zoo divides --eval-freq by n_envs for environment steps; offline, one step is one update.
    logs = tmp_path / "logs"
    zoo.main(
        [
            "train",
            "--dataset",
            MAZE_ID,
            "-f",
            str(logs),
            "--eval-freq",
            "5",
            "--eval-episodes",
            "1",
            *TINY,
            "offline_steps:10",
            "n_envs:2",
        ]
    )
    assert np.load(run_folder(logs) / "evaluations.npz")["timesteps"].tolist() == [5, 10]


def test_a_hindsight_preset_trains_with_the_package_s_buffer(maze_root, tmp_path):
    # The goal-carrying presets name HerReplayBuffer; rl-zoo alone would evaluate the name to SB3's class.
    dataset_id = "sb3_iql/pointmaze/umaze-cut-v0"
    make_pointmaze_dataset("umaze", "sparse", recipe="cut", n_steps=MAZE_STEPS, n_reference_episodes=1)
    zoo.main(["train", "--dataset", dataset_id, "-f", str(tmp_path / "logs"), *TINY, "offline_steps:10"])
    model = IQL.load(run_folder(tmp_path / "logs") / f"{MAZE_ENV_ID}.zip", env=gym.make(MAZE_ENV_ID))
    assert (model.replay_buffer_class, type(model.policy)) == (HerReplayBuffer, MultiInputPolicy)
    assert model.replay_buffer_kwargs == {"n_sampled_goal": 4, "goal_selection_strategy": "future"}
    assert (model.policy_extraction, model._n_updates) == ("ddpg_awr", 10)


def test_offline_then_online_fine_tuning(maze_root, tmp_path):
    logs = tmp_path / "logs"
    zoo.main(
        [
            *[
                "train",
                "--dataset",
                MAZE_ID,
                "--finetune",
                "-n",
                "12",
                "-f",
                str(logs),
                "--gym-packages",
                "gymnasium_robotics",
            ],
            *["--eval-freq", "10", "--eval-episodes", "1", *TINY, "offline_steps:8"],
        ]
    )
    run = run_folder(logs)
    model = IQL.load(run / f"{MAZE_ENV_ID}.zip")
    # 8 offline updates, then 12 environment steps with one update each; num_timesteps goes on from the offline phase.
    assert (model._n_offline_updates, model._n_updates, model.num_timesteps) == (8, 20, 20)
    assert (model.actor_lr_schedule, model.learning_starts) == ("constant", 0)
    assert np.load(run / "evaluations.npz")["timesteps"].tolist() == [10, 20]
    progress = read_progress(run / "progress.csv")
    updates = progress["train/n_updates"][np.isfinite(progress["train/n_updates"])]
    # The offline phase's last dump, then online dumps (SB3 logs before the gradient step of its last env step).
    assert updates[updates <= 8].max() == 8 and updates.max() >= 19
    assert np.nanmax(progress["time/total_timesteps"]) == 20


def test_a_preset_s_policy_kwargs_take_those_of_params_and_fine_tuning_keeps_an_offline_preset(maze_root, tmp_path):
    from sb3_iql.presets import preset_for
    from sb3_iql.zoo import zoo_hyperparams

    presets = tmp_path / "presets.yml"  # an offline preset with network settings, no fine-tuning one
    preset = {**preset_for(MAZE_ID), "policy_kwargs": "dict(normalize_observations=True, net_arch=[8])"}
    presets.write_text(yaml.safe_dump({MAZE_ID: preset}))
    with pytest.warns(UserWarning, match="No IQL fine-tuning preset for dataset .*its offline preset"):
        (finetune,) = zoo_hyperparams(MAZE_ID, finetune=True, presets_path=str(presets)).values()
    assert (finetune["expectile"], finetune["reward_transform"], finetune["policy_kwargs"]) == (
        0.9, "antmaze", preset["policy_kwargs"]
    )  # fmt: skip
    assert (finetune["n_timesteps"], finetune["learning_starts"], finetune["actor_lr_schedule"]) == (1_000_000, 0, "constant")
    logs = tmp_path / "logs"
    params = ["batch_size:16", "policy_kwargs:dict(net_arch=[16], actor_dropout=0.2)", "offline_steps:2"]
    zoo.main(["train", "--dataset", MAZE_ID, "--presets", str(presets), "-f", str(logs), *TINY[:4], "-params", *params])
    model = IQL.load(run_folder(logs) / f"{MAZE_ENV_ID}.zip")
    assert model.policy.net_arch == [16] and model.policy.observation_normalizer is not None  # merged, as from_preset
    assert preset["dropout"] == 0.1 and model.dropout == 0.2  # the actor's dropout replaces the preset's


def test_params_dropout_replaces_a_preset_s_actor_dropout(maze_root, tmp_path):
    """-params dropout:R over a preset whose policy_kwargs set actor_dropout: IQL refused the two rates before."""
    from sb3_iql.presets import preset_for

    presets = tmp_path / "presets.yml"
    preset = {**preset_for(MAZE_ID), "policy_kwargs": "dict(actor_dropout=0.3, net_arch=[8])"}
    preset.pop("dropout", None)
    presets.write_text(yaml.safe_dump({MAZE_ID: preset}))
    logs = tmp_path / "logs"
    params = ["dropout:0.2", "offline_steps:2"]
    zoo.main(["train", "--dataset", MAZE_ID, "--presets", str(presets), "-f", str(logs), *TINY[:4], "-params", *params])
    model = IQL.load(run_folder(logs) / f"{MAZE_ENV_ID}.zip")
    assert model.dropout == 0.2 and model.policy.net_arch == [8]  # the given rate, the preset's other settings


def test_the_closest_preset_named_is_of_the_same_environment():
    """Plain string similarity named D4RL/pointmaze/medium-v2 for D4RL/hopper/medium-v2, a Hopper preset for CartPole."""
    assert zoo._same_environment("D4RL/hopper/medium-v2", False, None)[0].split("/")[1] == "hopper"
    assert zoo._same_environment("sb3_iql/cartpole/medium-expert-v0", False, None) == []


def test_a_dataset_without_preset_trains_with_the_defaults_and_a_warning(maze_root, tmp_path):
    from sb3_iql.datasets import make_pointmaze_dataset
    from sb3_iql.zoo import zoo_hyperparams

    dataset_id = "mine/maze/umaze-stitch-v0"  # no preset matches this namespace
    make_pointmaze_dataset("umaze", stitch=True, n_steps=600, n_reference_episodes=1, dataset_id=dataset_id)
    with pytest.warns(
        UserWarning,
        match=r"No IQL preset for dataset 'mine/maze/umaze-stitch-v0'.*closest preset is 'sb3_iql/pointmaze/\*-stitch-v\*'",
    ):
        (hyperparams,) = zoo_hyperparams(dataset_id).values()
    assert (hyperparams["policy"], hyperparams["n_timesteps"], hyperparams["offline_dataset"]) == ("MlpPolicy", 0, dataset_id)
    assert "expectile" not in hyperparams and "beta" not in hyperparams  # IQL's own defaults apply
    with pytest.warns(UserWarning, match="No IQL preset"):
        (finetune,) = zoo_hyperparams(dataset_id, finetune=True).values()
    assert finetune["n_timesteps"] > 0 and finetune["actor_lr_schedule"] == "constant"
    # and rl-zoo trains it (before, this failed with "No IQL preset for dataset ...")
    logs = tmp_path / "logs"
    with pytest.warns(UserWarning, match="No IQL preset"):
        zoo.main(["train", "--dataset", dataset_id, "-f", str(logs), "--eval-freq", "5", "--eval-episodes", "1",
                  *TINY, "offline_steps:6"])  # fmt: skip
    model = IQL.load(run_folder(logs) / f"{MAZE_ENV_ID}.zip")
    assert model.num_timesteps == 6 and (model.expectile, model.beta) == (0.7, 3.0)


def test_an_interrupted_offline_run_resumes_from_its_checkpoint_to_the_same_parameters(maze_root, tmp_path):
    # dropout:None: the stitch preset's actor dropout draws from torch's global generator, which rl-zoo's checkpoints
    # do not keep (benchmarks/scores.py keeps it beside its own), so a resumed run would draw other masks
    common = ["train", "--dataset", MAZE_ID, "--eval-freq", "3", "--eval-episodes", "1", *TINY, "offline_steps:8",
              "dropout:None"]  # fmt: skip
    # uninterrupted, with a checkpoint every 4 updates in the run folder (rl-zoo's --save-freq)
    zoo.main([*common, "-f", str(tmp_path / "whole"), "--save-freq", "4"])
    whole = run_folder(tmp_path / "whole")
    checkpoint = whole / "rl_model_4_steps.zip"
    assert checkpoint.is_file()
    # "killed" after 4 updates: rl-zoo's -i continues from the checkpoint file, the datasets loaded again
    zoo.main([*common, "-f", str(tmp_path / "resumed"), "-i", str(checkpoint)])
    expected = IQL.load(whole / f"{MAZE_ENV_ID}.zip")
    resumed = IQL.load(run_folder(tmp_path / "resumed") / f"{MAZE_ENV_ID}.zip")
    assert (resumed._n_offline_updates, resumed.num_timesteps) == (8, 8)
    finished = whole / f"{MAZE_ENV_ID}.zip"  # nothing left: an error, where it saved an untrained run, exit 0
    for again in (common, [item for item in common if item != "offline_steps:8"]):  # the preset's 1M: not reopened
        with pytest.raises(SystemExit, match=r"has finished its offline phase \(8 updates\) and -n is 0: nothing to"):
            zoo.main([*again, "-f", str(tmp_path / "again"), "-i", str(finished)])
    zoo.main([*common[:-2], "offline_steps:10", "dropout:None", "-f", str(tmp_path / "more"), "--log-interval", "1",
              "-i", str(finished)])  # fmt: skip
    more = run_folder(tmp_path / "more")
    extended = IQL.load(more / f"{MAZE_ENV_ID}.zip")
    assert extended._n_offline_updates == 10, "a larger offline_steps trained none before"
    assert extended.offline_log_interval == 1000, "the command line's --log-interval is not saved with the model"
    updates = read_progress(more / "progress.csv")["train/n_updates"]
    assert updates[np.isfinite(updates)].tolist() == [9, 10], "--log-interval counts updates offline (1000 before)"
    for (name, ours), theirs in zip(resumed.policy.state_dict().items(), expected.policy.state_dict().values()):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=name)
    for optimizer in ("actor", "critic", "value_net"):
        ours = getattr(resumed, optimizer).optimizer.state_dict()["state"]
        theirs = getattr(expected, optimizer).optimizer.state_dict()["state"]
        assert all(np.array_equal(ours[key]["exp_avg"], theirs[key]["exp_avg"]) for key in theirs), optimizer
    # With online steps after it: the counters go on from the checkpoint's through both phases, as uninterrupted.
    finetune = [*common, "--finetune", "-n", "6", "--gym-packages", "gymnasium_robotics"]
    zoo.main([*finetune, "-f", str(tmp_path / "whole_ft"), "--save-freq", "4"])
    checkpoint = run_folder(tmp_path / "whole_ft") / "rl_model_4_steps.zip"
    zoo.main([*finetune, "-f", str(tmp_path / "resumed_ft"), "-i", str(checkpoint)])
    resumed = run_folder(tmp_path / "resumed_ft")
    assert IQL.load(resumed / f"{MAZE_ENV_ID}.zip").num_timesteps == 14
    # a model past its offline phase (an online checkpoint, or a finished run) counts on too, with -n more steps
    zoo.main(
        [*finetune, "-f", str(tmp_path / "online_ft"), "-i", str(run_folder(tmp_path / "whole_ft") / f"{MAZE_ENV_ID}.zip")]
    )
    assert IQL.load(run_folder(tmp_path / "online_ft") / f"{MAZE_ENV_ID}.zip").num_timesteps == 20
    # every 3 calls from the checkpoint's step 4 (SB3 counts calls); rl-zoo's own learn() started from 0 again
    assert np.load(resumed / "evaluations.npz")["timesteps"].tolist() == [7, 10, 13]
