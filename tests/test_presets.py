"""Presets of the paper keyed by Minari id: lookup order, values per domain, errors, and building IQL from them."""

import inspect
import pathlib
import warnings
from collections.abc import Iterator

import pytest
import torch as th
import yaml
from maze_data import MAZE_ID, tiny_maze_root

from sb3_iql import IQL
from sb3_iql.presets import (
    DEFAULT_PRESETS_PATH,
    ZOO_ONLY_KEYS,
    PresetNotFoundError,
    check_argument_keys,
    iql_kwargs,
    known_presets,
    load_presets,
    preset_arguments,
    preset_for,
    preset_key,
    with_overrides,
)

IQL_ARGUMENTS = set(inspect.signature(IQL.__init__).parameters) - {"self"}


@pytest.fixture(scope="module")
def maze_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    yield from tiny_maze_root(tmp_path_factory)


@pytest.mark.parametrize(
    "dataset_id, expectile, beta, dropout, reward_transform",
    [
        ("mujoco/hopper/expert-v0", 0.7, 3.0, None, "locomotion"),  # medium-v0: measured here (below)
        ("mujoco/halfcheetah/expert-v0", 0.7, 3.0, None, "locomotion"),
        ("mujoco/walker2d/simple-v0", 0.7, 3.0, None, "locomotion"),
        ("D4RL/antmaze/large-diverse-v1", 0.9, 10.0, None, "antmaze"),
        ("D4RL/antmaze/umaze-v1", 0.9, 10.0, None, "antmaze"),
        ("D4RL/kitchen/mixed-v2", 0.7, 0.5, 0.1, None),
        ("D4RL/pen/human-v2", 0.7, 0.5, 0.1, None),
        ("D4RL/relocate/cloned-v2", 0.7, 0.5, 0.1, None),
        ("sb3_iql/pointmaze/umaze-v0", 0.9, 10.0, None, "antmaze"),
    ],
)
def test_offline_presets_follow_the_paper(dataset_id, expectile, beta, dropout, reward_transform):
    preset = preset_for(dataset_id)
    assert (preset["expectile"], preset["beta"], preset.get("dropout"), preset["reward_transform"]) == (
        expectile,
        beta,
        dropout,
        reward_transform,
    )
    assert preset["actor_lr_schedule"] == "cosine"
    assert preset["n_timesteps"] == 0  # rl-zoo: learn(0), a pure offline run
    assert preset["offline_steps"] == 1_000_000
    assert (preset["batch_size"], preset["learning_rate"], preset["gamma"], preset["tau"]) == (256, 3e-4, 0.99, 0.005)


@pytest.mark.parametrize(
    "dataset_id, finetune, extraction",
    [
        ("sb3_iql/pointmaze/large-stitch-v0", False, ("ddpg_awr", 0.01)),  # measured: scores.md, "Findings"
        ("sb3_iql/pointmaze/umaze-stitch-pixels48-v0", False, ("awr", 0.01)),  # measured: scores.md, "Twenty-fifth"
        ("D4RL/pointmaze/large-v2", False, ("ddpg_awr", 0.01)),
        ("sb3_iql/pointmaze/large-stitch-v0", True, ("awr", None)),  # fine-tuning: the paper's, not measured with DDPG
        ("D4RL/antmaze/large-diverse-v1", False, ("awr", None)),  # the paper's presets stay the paper's
        ("sb3_iql/hopper/medium-v0", False, ("awr", None)),  # measured: AWR with d3rlpy's choices (below)
        ("mujoco/hopper/medium-v0", False, ("awr", None)),
        ("sb3_iql/hopper/medium-replay-v0", False, ("awr", None)),
        ("mujoco/hopper/expert-v0", False, ("awr", None)),  # not measured: the paper's
        ("sb3_iql/hopper/expert-v0", False, ("awr", None)),  # benchmarks/make_locomotion_datasets.py's, not measured
        ("mujoco/walker2d/medium-v0", False, ("awr", None)),
    ],
)
def test_measured_presets_extract_the_policy_with_ddpg_and_the_others_with_the_paper_s_awr(dataset_id, finetune, extraction):
    preset = preset_for(dataset_id, finetune)
    assert (preset.get("policy_extraction", "awr"), preset.get("bc_weight")) == extraction


@pytest.mark.parametrize(
    "dataset_id, dropout",
    [
        ("sb3_iql/pointmaze/large-stitch-v0", 0.1),  # measured: scores.md, "Findings" (long runs drift without it)
        ("sb3_iql/pointmaze/medium-stitch-v0", 0.1),
        ("sb3_iql/pointmaze/umaze-stitch-pixels48-v0", 0.1),
        ("sb3_iql/pointmaze/large-v0", None),  # goal-carrying: measured without dropout
        ("sb3_iql/pointmaze/large-dense-v0", None),
        ("D4RL/pointmaze/large-v2", None),
        ("D4RL/antmaze/large-diverse-v1", None),  # the paper's
    ],
)
def test_stitch_maze_presets_add_actor_dropout(dataset_id, dropout):
    preset = preset_for(dataset_id)
    assert preset.get("dropout") == dropout
    assert (preset["expectile"], preset["beta"], preset["reward_transform"]) == (0.9, 10.0, "antmaze")


@pytest.mark.parametrize(
    "dataset_id, expected",
    [
        # measured (scores.md, "Findings", "Thirty-eighth session"): d3rlpy's three choices and a constant lr on
        # both; LayerNorm in the critics and value net on the broad medium-replay data, observations normalised
        # with the dataset's statistics on the medium data
        ("sb3_iql/hopper/medium-replay-v0", ("joint", "constant", "sigmoid", -1.5, "pytorch", False, True)),
        ("sb3_iql/hopper/medium-v0", ("joint", "constant", "sigmoid", -1.5, "pytorch", True, False)),
        ("mujoco/hopper/medium-v0", ("joint", "constant", "sigmoid", -1.5, "pytorch", True, False)),
        ("mujoco/hopper/expert-v0", ("sequential", "cosine", "clip", 0.0, "orthogonal", False, False)),  # the paper's
        ("sb3_iql/hopper/expert-v0", ("sequential", "cosine", "clip", 0.0, "orthogonal", False, False)),
    ],
)
def test_hopper_presets_take_d3rlpy_s_choices_with_layer_norm_on_medium_replay_and_normalised_medium_observations(
    dataset_id, expected
):
    preset = preset_for(dataset_id)
    policy_kwargs = preset.get("policy_kwargs", {})
    assert (
        preset.get("update_order", "sequential"),
        preset["actor_lr_schedule"],
        policy_kwargs.get("log_std_parametrization", "clip"),
        policy_kwargs.get("log_std_init", 0.0),
        policy_kwargs.get("weight_init", "orthogonal"),
        policy_kwargs.get("normalize_observations", False),
        policy_kwargs.get("critic_layer_norm", False),
    ) == expected
    assert (preset["expectile"], preset["beta"], preset["reward_transform"]) == (0.7, 3.0, "locomotion")


HINDSIGHT = ("MultiInputPolicy", "HerReplayBuffer", {"n_sampled_goal": 4, "goal_selection_strategy": "future"})
NO_HINDSIGHT = ("MlpPolicy", None, None)
STORED_GOALS = ("MultiInputPolicy", None, None)


@pytest.mark.parametrize(
    "dataset_id, hindsight, extraction, beta",
    [
        # measured per recipe (docs/guide/datasets.md, "Which option for which goal dataset")
        ("D4RL/pointmaze/large-v2", HINDSIGHT, "ddpg_awr", 10.0),  # Minari's recipe: the goal moves once reached
        ("sb3_iql/pointmaze/medium-cut-v0", HINDSIGHT, "ddpg_awr", 10.0),  # its local replica
        ("sb3_iql/pointmaze/medium-play-v0", HINDSIGHT, "ddpg_awr", 10.0),  # stored goals never pursued
        ("sb3_iql/pointmaze/medium-antmaze-unseen-v0", HINDSIGHT, "awr", 10.0),  # the paper's AWR leads there
        ("sb3_iql/pointmaze/medium-antmaze-v0", STORED_GOALS, "awr", 0.3),  # near-expert data: a low beta
        ("sb3_iql/pointmaze/medium-v0", HINDSIGHT, "ddpg_awr", 10.0),  # fixed-length runs of the -cut data
        ("sb3_iql/pointmaze/large-v0", HINDSIGHT, "ddpg_awr", 10.0),
        ("D4RL/pointmaze/large-dense-v2", NO_HINDSIGHT, "ddpg_awr", 10.0),  # dense: not measured
        ("D4RL/pointmaze/open-v2", NO_HINDSIGHT, "ddpg_awr", 10.0),
        ("sb3_iql/pointmaze/large-stitch-v0", NO_HINDSIGHT, "ddpg_awr", 10.0),  # the goal is the evaluation's
        ("sb3_iql/pointmaze/large-dense-v0", NO_HINDSIGHT, "ddpg_awr", 10.0),
        ("sb3_iql/pointmaze/medium-dense-play-v0", NO_HINDSIGHT, "ddpg_awr", 10.0),  # dense recipes too
        ("sb3_iql/pointmaze/medium-v0:finetune", NO_HINDSIGHT, "awr", 10.0),
    ],
)
def test_goal_carrying_sparse_maze_presets_relabel_goals_as_measured_for_their_recipe(dataset_id, hindsight, extraction, beta):
    dataset_id, _, finetune = dataset_id.partition(":")
    preset = preset_for(dataset_id, finetune=bool(finetune))
    assert "relabel_eval_goal" not in preset  # measured: hindsight goals or none, never the evaluation goal's
    assert (preset["policy"], preset.get("replay_buffer_class"), preset.get("replay_buffer_kwargs")) == hindsight
    assert (preset.get("policy_extraction", "awr"), preset["beta"]) == (extraction, beta)
    assert (preset["expectile"], preset["reward_transform"]) == (0.9, "antmaze")


@pytest.mark.parametrize("dataset_id", ["D4RL/antmaze/large-diverse-v1", "D4RL/antmaze/medium-play-v1", MAZE_ID])
def test_finetune_presets_are_antmaze_with_a_constant_actor_lr_and_online_steps(dataset_id):
    preset = preset_for(dataset_id, finetune=True)
    assert (preset["expectile"], preset["beta"], preset["reward_transform"]) == (0.9, 10.0, "antmaze")
    assert preset["actor_lr_schedule"] == "constant"
    assert preset["n_timesteps"] == 1_000_000
    assert (preset["learning_starts"], preset["train_freq"], preset["gradient_steps"]) == (0, 1, 1)


def test_exact_ids_come_first_then_patterns_in_file_order():
    assert preset_key("D4RL/antmaze/large-diverse-v1") == "D4RL/antmaze/large-diverse-v1"
    assert preset_key("D4RL/antmaze/large-diverse-v2") == "D4RL/antmaze/*"
    assert preset_key("mujoco/humanoid/expert-v0") == "mujoco/*"
    assert preset_key("sb3_iql/pointmaze/large-dense-stitch-v0") == "sb3_iql/pointmaze/*-stitch-v*"
    assert preset_key("sb3_iql/pointmaze/large-dense-v0") == "sb3_iql/pointmaze/*-dense-*"
    assert preset_key("sb3_iql/pointmaze/medium-dense-cut-v0") == "sb3_iql/pointmaze/*-dense-*"  # before *-cut-v*
    assert preset_key("D4RL/antmaze/large-play-v1", finetune=True) == "D4RL/antmaze/large-play-v1:finetune"
    assert preset_key("sb3_iql/pointmaze/medium-v0", finetune=True) == "sb3_iql/pointmaze/*:finetune"


@pytest.mark.parametrize(
    "recipe", ["large-stitch", "medium-cut", "medium-play", "medium-antmaze", "medium-antmaze-unseen", "medium"]
)
def test_a_local_recipe_of_another_version_keeps_its_recipe_s_preset(recipe):
    """The recipe globs named -v0: a -v1 of the same recipe fell through to the general maze preset (the stitch
    mazes lost their dropout, the goal mazes their hindsight goals, -antmaze its beta)."""
    assert preset_for(f"sb3_iql/pointmaze/{recipe}-v1") == preset_for(f"sb3_iql/pointmaze/{recipe}-v0")


def test_pixel_pointmaze_presets_are_the_maze_settings_with_the_cnn_policy():
    pixels, states = (preset_for(f"sb3_iql/pointmaze/umaze-stitch{kind}-v0", True) for kind in ("-pixels48", ""))
    assert pixels.pop("policy") == "CnnPolicy" and states.pop("policy") == "MlpPolicy"
    assert pixels == states  # fine-tuning: not measured on pixels
    pixels, states = (preset_for(f"sb3_iql/pointmaze/{maze}-v0") for maze in ("large-pixels48", "large"))
    assert pixels.pop("policy") == "CnnPolicy" and states.pop("policy") == "MultiInputPolicy"
    assert pixels == {key: value for key, value in states.items() if "replay_buffer" not in key}


def test_pixel_stitch_preset_takes_awr_on_keypoints():
    # measured (scores.md, "Twenty-fifth session"): the stitch preset's DDPG + AWR on NatureCNN stayed at behaviour
    # cloning's level on pixels; the paper's AWR on SpatialSoftmaxCNN's keypoints learns
    pixels, states = (preset_for(f"sb3_iql/pointmaze/umaze-stitch{kind}-v0") for kind in ("-pixels48", ""))
    assert pixels.pop("policy") == "CnnPolicy" and pixels.pop("policy_extraction") == "awr"
    assert pixels.pop("policy_kwargs") == {"features_extractor_class": "SpatialSoftmaxCNN", "weight_init": "pytorch"}
    states.pop("policy"), states.pop("policy_extraction")
    assert pixels == states


def test_lookup_order_in_a_custom_file(tmp_path):
    path = tmp_path / "custom.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "team/*": {"policy": "MlpPolicy", "n_timesteps": 0, "beta": 1.0},
                "team/robot/*": {"policy": "MlpPolicy", "n_timesteps": 0, "beta": 2.0},
                "team/robot/arm-v0": {"policy": "MlpPolicy", "n_timesteps": 0, "beta": 3.0},
            },
            sort_keys=False,
        )
    )
    assert preset_for("team/robot/arm-v0", path=str(path))["beta"] == 3.0  # exact id, although listed last
    assert preset_for("team/robot/leg-v0", path=str(path))["beta"] == 1.0  # first matching pattern wins
    assert known_presets(path=str(path)) == ["team/robot/arm-v0", "team/*", "team/robot/*"]
    path.write_text(yaml.safe_dump({"team/*": {"policy": "MlpPolicy", "n_timesteps": 0, "beta": 4.0}}))
    assert preset_for("team/robot/arm-v0", path=str(path))["beta"] == 4.0  # an edited file is read again


def test_unknown_ids_raise_an_error_listing_the_known_ones():
    with pytest.raises(PresetNotFoundError, match="No IQL preset for dataset 'nobody/nothing-v0'") as error:
        preset_for("nobody/nothing-v0")
    assert isinstance(error.value, KeyError)
    message = str(error.value)
    assert "D4RL/antmaze/large-diverse-v1" in message and "mujoco/*" in message and "sb3_iql/pointmaze/*" in message
    # Locomotion has an offline preset only: the error says so and lists the fine-tuning ones.
    with pytest.raises(PresetNotFoundError, match="fine-tuning presets") as error:
        preset_for("mujoco/hopper/medium-v0", finetune=True)
    assert "D4RL/antmaze/*" in str(error.value) and "mujoco/*" not in str(error.value).split("Offline presets")[0]


def test_presets_are_copies():
    preset_for("D4RL/antmaze/umaze-v1")["beta"] = -1.0
    assert preset_for("D4RL/antmaze/umaze-diverse-v1")["beta"] == 10.0  # same YAML anchor, not shared
    assert preset_for("D4RL/antmaze/umaze-v1")["beta"] == 10.0


def test_load_presets_gives_every_entry_its_own_copy():
    presets = load_presets()
    presets["mujoco/hopper/expert-v0"]["beta"] = 1.0  # its YAML anchor is shared with the other locomotion entries
    assert presets["mujoco/halfcheetah/medium-v0"]["beta"] == 3.0 and load_presets()["mujoco/hopper/expert-v0"]["beta"] == 3.0


def test_overrides_replace_what_goes_with_them_and_take_rl_zoo_strings():
    hindsight = preset_arguments("sb3_iql/pointmaze/umaze-v0")
    assert hindsight["replay_buffer_kwargs"]["n_sampled_goal"] == 4
    assert "replay_buffer_kwargs" not in with_overrides(hindsight, {"replay_buffer_class": None})  # HER's, for HER only
    kept = with_overrides(hindsight, {"replay_buffer_class": "HerReplayBuffer", "replay_buffer_kwargs": {"n_sampled_goal": 2}})
    assert kept["replay_buffer_kwargs"] == {"n_sampled_goal": 2}
    restated = with_overrides(hindsight, {"replay_buffer_class": "HerReplayBuffer"})  # the same class: its kwargs stay
    assert restated["replay_buffer_kwargs"] == hindsight["replay_buffer_kwargs"]
    assert with_overrides(hindsight, {"tensorboard_log": "lin_runs"})["tensorboard_log"] == "lin_runs"  # no schedule
    stitch = preset_arguments(MAZE_ID)
    assert stitch["dropout"] == 0.1
    assert "dropout" not in with_overrides(stitch, {"policy_kwargs": {"actor_dropout": 0.3}})
    as_zoo_writes = {"policy_kwargs": "dict(net_arch=[16], activation_fn=nn.Tanh)", "learning_rate": "lin_1e-3"}
    written = with_overrides(stitch, as_zoo_writes)
    assert written["policy_kwargs"] == {"net_arch": [16], "activation_fn": th.nn.Tanh}
    assert written["learning_rate"](0.5) == 5e-4


def test_the_actor_s_dropout_is_given_once():
    assert IQL("MlpPolicy", "Pendulum-v1", policy_kwargs={"actor_dropout": 0.3}).dropout == 0.3
    assert IQL("MlpPolicy", "Pendulum-v1", dropout=0.3, policy_kwargs={"actor_dropout": 0.3}).actor.latent_pi[2].p == 0.3
    with pytest.raises(ValueError, match=r"dropout=0.1 and policy_kwargs\['actor_dropout'\]=0.3 disagree"):
        IQL("MlpPolicy", "Pendulum-v1", dropout=0.1, policy_kwargs={"actor_dropout": 0.3})
    with pytest.raises(ValueError, match="dropout must be"):
        IQL("MlpPolicy", "Pendulum-v1", policy_kwargs={"actor_dropout": 1.0})


def test_every_entry_is_made_of_iql_arguments_and_rl_zoo_keys():
    presets = load_presets(DEFAULT_PRESETS_PATH)
    assert len(presets) > 40
    for key, preset in presets.items():
        assert set(iql_kwargs(preset)) <= IQL_ARGUMENTS, key
        assert set(preset) - set(iql_kwargs(preset)) <= ZOO_ONLY_KEYS, key
        assert preset["policy"] in ("MlpPolicy", "MultiInputPolicy", "CnnPolicy") and "n_timesteps" in preset, key


def test_preset_arguments_are_iql_constructor_arguments_with_the_dataset():
    arguments = preset_arguments("D4RL/antmaze/umaze-v1", finetune=True)
    assert arguments == {
        **iql_kwargs(preset_for("D4RL/antmaze/umaze-v1", finetune=True)),
        "offline_dataset": "D4RL/antmaze/umaze-v1",
    }
    assert set(arguments) <= IQL_ARGUMENTS and arguments["policy"] == "MlpPolicy"
    with pytest.raises(PresetNotFoundError):
        preset_arguments("nobody/nothing-v0")


def test_from_preset_builds_iql_with_the_preset_and_overrides(maze_root):
    model = IQL.from_preset(MAZE_ID, offline_steps=6, batch_size=16, policy_kwargs={"net_arch": [16]}, seed=0)
    assert (model.expectile, model.beta, model.reward_transform) == (0.9, 10.0, "antmaze")
    assert (model.offline_steps, model.batch_size, model.actor_lr_schedule) == (6, 16, "cosine")
    assert model.offline_dataset_ids == [MAZE_ID]
    # The environment is the dataset's evaluation environment: the fixed goal, not the collection's random goals.
    assert model.get_env().get_attr("spec")[0].kwargs["reset_target"] is False
    # r - 1 is applied to the offline rewards.
    rewards = model.replay_buffer.rewards[: model.offline_dataset_size, 0]
    assert rewards.max() <= 0.0 and rewards.min() == -1.0
    model.learn(0)
    assert model._n_offline_updates == 6

    class MyIQL(IQL):
        pass

    class WithOption(IQL):  # a subclass passing IQL's arguments on: every key of the preset was refused
        def __init__(self, policy, env=None, my_option: int = 1, **kwargs):
            super().__init__(policy, env, **kwargs)
            self.my_option = my_option

    finetune = MyIQL.from_preset(MAZE_ID, finetune=True, offline_steps=2, policy_kwargs={"net_arch": [16]})
    assert isinstance(finetune, MyIQL)
    assert WithOption.from_preset(MAZE_ID, my_option=3, policy_kwargs={"net_arch": [16]}).my_option == 3
    with pytest.raises(ValueError, match="Unknown hyperparameter 'my_optoin' in an override"):
        WithOption.from_preset(MAZE_ID, my_optoin=3)
    assert (finetune.actor_lr_schedule, finetune.learning_starts) == ("constant", 0)
    with pytest.raises(PresetNotFoundError):
        IQL.from_preset("nobody/nothing-v0")


def test_from_preset_merges_the_given_policy_kwargs_into_the_preset_s(maze_root, tmp_path):
    path = tmp_path / "presets.yml"
    preset = {**preset_for(MAZE_ID), "policy_kwargs": {"normalize_observations": True, "net_arch": [8]}}
    path.write_text(yaml.safe_dump({MAZE_ID: preset}))
    model = IQL.from_preset(MAZE_ID, path=str(path), offline_steps=2, policy_kwargs={"net_arch": [16]})
    assert model.policy.net_arch == [16] and model.policy.observation_normalizer is not None
    assert IQL.from_preset(MAZE_ID, path=str(path), policy_kwargs=None).policy.net_arch == [8]  # None: the preset's


def test_from_preset_reads_hyperparameters_written_as_rl_zoo_writes_them(maze_root, tmp_path):
    path = tmp_path / "presets.yml"
    preset = {
        **preset_for(MAZE_ID),
        "policy_kwargs": "dict(net_arch=[8, 4], activation_fn=nn.Tanh)",
        "learning_rate": "lin_1e-3",
    }
    path.write_text(yaml.safe_dump({MAZE_ID: preset}))
    model = IQL.from_preset(MAZE_ID, path=str(path), offline_steps=2)
    assert model.policy.net_arch == [8, 4] and model.policy.activation_fn is th.nn.Tanh
    assert model.lr_schedule(1.0) == pytest.approx(1e-3) and model.lr_schedule(0.25) == pytest.approx(2.5e-4)


def test_a_preset_model_warns_of_a_short_run_on_the_default_budget_as_any_model(maze_root):
    """Every preset writes offline_steps: 1000000, which the model took for a choice: no warning that the actor's
    cosine lr would barely decay over a shorter run."""
    model = IQL.from_preset(MAZE_ID, policy_kwargs={"net_arch": [8]}, batch_size=16)
    with pytest.warns(UserWarning, match=r"offline_steps=1,000,000 .* these 3 it will still be 1.000"):
        model.learn_offline(3)
    chosen = IQL.from_preset(MAZE_ID, offline_steps=1_000_000, policy_kwargs={"net_arch": [8]}, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for: no warning
        chosen.learn_offline(3)


def test_unknown_keys_in_a_preset_file_or_an_override_are_named_with_the_closest_argument(maze_root, tmp_path):
    path = tmp_path / "presets.yml"
    path.write_text(yaml.safe_dump({MAZE_ID: {**preset_for(MAZE_ID), "expectle": 0.8}}))
    with pytest.raises(ValueError, match=rf"'expectle' in {path}, entry '{MAZE_ID}' \(did you mean 'expectile'\?\)"):
        IQL.from_preset(MAZE_ID, path=str(path))  # a bare TypeError of IQL's constructor before
    with pytest.raises(ValueError, match=r"Unknown hyperparameter 'bta' in an override \(did you mean 'beta'\?\)"):
        IQL.from_preset(MAZE_ID, bta=3.0)
    with pytest.raises(ValueError, match=r"'n_timesteps' is an rl-zoo key, not a model argument"):
        IQL.from_preset(MAZE_ID, n_timesteps=10)
    check_argument_keys(IQL, ["beta", "n_envs", "noise_type", "noise_std"], "-params")  # rl-zoo's own keys pass
    path.write_text(f"{MAZE_ID}:\nother/id-v0: {{beta: 1.0}}\n")
    with pytest.raises(ValueError, match=rf"entry '{MAZE_ID}' is None, not a mapping"):  # the file, not which entry
        preset_for(MAZE_ID, path=str(path))


def test_dropout_given_over_a_preset_s_actor_dropout_replaces_it():
    stitch = {**preset_arguments(MAZE_ID), "policy_kwargs": {"actor_dropout": 0.1, "net_arch": [8]}}
    del stitch["dropout"]
    given = with_overrides(stitch, {"dropout": 0.3})  # both kept before: IQL refused them as disagreeing
    assert given["dropout"] == 0.3 and given["policy_kwargs"] == {"net_arch": [8]}


def test_a_fine_tuning_suffix_in_the_id_is_refused():
    """It matched the fine-tuning preset by exact key, or the offline glob, depending on the id."""
    for dataset_id in ("D4RL/antmaze/umaze-v1:finetune", "sb3_iql/pointmaze/umaze-stitch-v0:finetune"):
        with pytest.raises(ValueError, match="pass the dataset id alone, and finetune=True"):
            preset_for(dataset_id)
