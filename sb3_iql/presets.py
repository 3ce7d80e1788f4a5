"""
Hyperparameter presets, keyed by Minari dataset id (``sb3_iql/hyperparams/iql.yml``): the IQL paper's for its
domains (AntMaze, locomotion, Kitchen and Adroit, fine-tuning), and measured ones where the benchmarks found better
(the PointMaze mazes; Hopper medium and medium-replay, ``mujoco/hopper/medium-v0`` included: README, "Three presets
leave the paper"). The paper's algorithm on any dataset: the constructor's defaults with the domain's expectile,
beta and ``reward_transform``.

Lookup order of :func:`preset_for`:

1. the exact dataset id (``"D4RL/antmaze/large-diverse-v1"``), with the suffix ``":finetune"`` for fine-tuning;
2. the glob patterns of the file (``"D4RL/antmaze/*"``, ``"mujoco/*"``, ``"sb3_iql/pointmaze/*"``...), in file order,
   matched with :func:`fnmatch.fnmatchcase` (``*`` also matches ``/``); the first match wins.

An entry is in rl-zoo format: IQL constructor arguments plus the rl-zoo keys in :data:`ZOO_ONLY_KEYS`
(``n_timesteps``: environment steps after the offline phase, 0 for a pure offline run).

Presets are data: this module builds no model (it imports nothing of the package). :func:`preset_arguments` gives
the constructor arguments of a dataset's preset, and ``IQL.from_preset`` builds the model from them.
"""

import copy
import difflib
import fnmatch
import inspect
import os
from collections.abc import Iterable
from functools import cache
from typing import Any

import yaml
from stable_baselines3.common.utils import LinearSchedule
from torch import nn

#: The presets shipped with the package.
DEFAULT_PRESETS_PATH = os.path.join(os.path.dirname(__file__), "hyperparams", "iql.yml")
#: Suffix of the keys of the fine-tuning presets (offline, then online).
FINETUNE_SUFFIX = ":finetune"
#: rl-zoo keys of a preset that are not IQL constructor arguments.
ZOO_ONLY_KEYS = frozenset(
    {
        "n_timesteps",
        "n_envs",
        "env_kwargs",
        "normalize",
        "env_wrapper",
        "vec_env_wrapper",
        "frame_stack",
        "callback",
        "monitor_kwargs",
        "noise_type",  # rl-zoo makes action_noise of these two
        "noise_std",
    }
)
_PATTERN_CHARACTERS = frozenset("*?[")


class PresetNotFoundError(KeyError):
    """No preset applies to a dataset id; the message lists the known ids and patterns."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _is_pattern(key: str) -> bool:
    return any(character in _PATTERN_CHARACTERS for character in key)


@cache
def _read_presets(path: str, version: tuple[int, int]) -> dict[str, dict[str, Any]]:
    """:param version: the file's modification time and size: an edited file is read again"""
    with open(path) as file_handler:
        presets = yaml.safe_load(file_handler)
    if not isinstance(presets, dict):
        raise ValueError(f"{path} is not a preset file: expected a mapping of dataset id -> hyperparameters")
    for key, value in presets.items():
        if not isinstance(value, dict):
            raise ValueError(f"{path}: the entry {key!r} is {value!r}, not a mapping of hyperparameters")
    return presets


def _presets(path: str | None) -> dict[str, dict[str, Any]]:
    """:return: the entries of a preset file (default: the package's), shared: copy before modifying"""
    path = os.path.abspath(path or DEFAULT_PRESETS_PATH)
    status = os.stat(path)
    return _read_presets(path, (status.st_mtime_ns, status.st_size))


def load_presets(path: str | None = None) -> dict[str, dict[str, Any]]:
    """
    :param path: a YAML preset file (default: the package's ``hyperparams/iql.yml``)
    :return: every entry, keyed as in the file (ids, patterns, ``...:finetune`` keys); a copy, safe to modify (each
        entry its own: the file's YAML anchors share one mapping among the entries that use them)
    """
    return {key: copy.deepcopy(value) for key, value in _presets(path).items()}


def known_presets(finetune: bool = False, path: str | None = None) -> list[str]:
    """
    :param finetune: list the fine-tuning presets instead of the offline ones
    :param path: a YAML preset file (default: the package's)
    :return: the dataset ids and patterns that have a preset, in lookup order within each kind (ids, then patterns),
        without the ``:finetune`` suffix
    """
    keys = [key for key in _presets(path) if key.endswith(FINETUNE_SUFFIX) == finetune]
    names = [key.removesuffix(FINETUNE_SUFFIX) for key in keys]
    return [name for name in names if not _is_pattern(name)] + [name for name in names if _is_pattern(name)]


def preset_key(dataset_id: str, finetune: bool = False, path: str | None = None) -> str:
    """
    :param dataset_id: Minari dataset id, e.g. ``"mujoco/hopper/medium-v0"``
    :param finetune: look for the fine-tuning (offline then online) preset
    :param path: a YAML preset file (default: the package's)
    :return: the key of the entry that applies: the id itself (plus ``:finetune``) or the first matching pattern
    :raises PresetNotFoundError: no entry applies; the message lists the known ids and patterns
    :raises ValueError: ``dataset_id`` ends with ``:finetune`` (pass ``finetune=True``)
    """
    if dataset_id.endswith(FINETUNE_SUFFIX):
        raise ValueError(f"{dataset_id!r}: pass the dataset id alone, and finetune=True for its fine-tuning preset")
    presets = _presets(path)
    suffix = FINETUNE_SUFFIX if finetune else ""
    if dataset_id + suffix in presets:
        return dataset_id + suffix
    for key in presets:
        if key.endswith(FINETUNE_SUFFIX) == finetune and _is_pattern(key):
            if fnmatch.fnmatchcase(dataset_id, key.removesuffix(FINETUNE_SUFFIX)):
                return key
    kind = "fine-tuning presets" if finetune else "presets"
    hint = (
        f" Offline presets exist for more datasets: take preset_for({dataset_id!r}) and set "
        "actor_lr_schedule='constant' and n_timesteps (online steps) yourself."
        if finetune
        else " Pass the hyperparameters to IQL yourself, or add an entry to a copy of the preset file (path=...)."
    )
    raise PresetNotFoundError(
        f"No IQL preset for dataset {dataset_id!r}. Known {kind} (ids, then patterns): "
        f"{', '.join(known_presets(finetune, path))}.{hint}"
    )


def preset_for(dataset_id: str, finetune: bool = False, path: str | None = None) -> dict[str, Any]:
    """
    The preset hyperparameters for a dataset (the paper's, or a measured one: the module's docstring): an exact id
    match first, then the first matching glob pattern (``"D4RL/antmaze/*"``, ``"mujoco/*"``...) in file order.

    :param dataset_id: Minari dataset id, e.g. ``"D4RL/antmaze/large-diverse-v1"`` or ``"sb3_iql/pointmaze/umaze-v0"``
    :param finetune: the fine-tuning preset (offline updates then ``n_timesteps`` online steps, constant actor lr)
        instead of the offline one
    :param path: a YAML preset file in the same format (default: the package's ``hyperparams/iql.yml``)
    :return: a new dict in rl-zoo format: ``policy``, IQL constructor arguments and ``n_timesteps``
        (keys in :data:`ZOO_ONLY_KEYS` are for rl-zoo, not for IQL)
    :raises PresetNotFoundError: no preset applies; the message lists the known ids and patterns
    """
    presets = _presets(path)
    return copy.deepcopy(presets[preset_key(dataset_id, finetune, path)])


def check_preset_keys(
    dataset_id: str, model_class: type, finetune: bool = False, path: str | None = None, given: Iterable[str] = ()
) -> None:
    """
    :param dataset_id: Minari dataset id whose preset is checked
    :param model_class: the class the preset builds (``IQL``, or a subclass): its constructors' keyword arguments are
        accepted (a subclass's ``**kwargs`` passes its base class's on)
    :param finetune: the fine-tuning preset instead of the offline one
    :param path: a YAML preset file (default: the package's)
    :param given: keys the caller passes over the preset (named as given, not as the file's)
    :raises ValueError: a key of the dataset's entry (or of ``given``) that is neither one of them nor an rl-zoo key,
        naming the file, the entry and the closest argument (a typo in a preset file failed inside the constructor)
    """
    given = set(given)
    key = preset_key(dataset_id, finetune, path)
    check_argument_keys(model_class, given, "an override")
    check_argument_keys(model_class, _presets(path)[key], f"{path or DEFAULT_PRESETS_PATH}, entry {key!r}")
    zoo_keys = sorted(given & ZOO_ONLY_KEYS)
    if zoo_keys:
        raise ValueError(f"{zoo_keys[0]!r} is an rl-zoo key, not a model argument (n_timesteps: pass it to learn())")


def check_argument_keys(model_class: type, keys: Iterable[str], where: str) -> None:
    """
    :param keys: hyperparameter names of a configuration (rl-zoo's own keys, ``n_timesteps``..., and ``policy``
        accepted)
    :param where: where they come from, for the message (``"-params"``, a file and entry)
    :raises ValueError: a key that is not a keyword argument of ``model_class`` (``constructor_arguments``), naming
        the closest one
    """
    accepted = constructor_arguments(model_class)
    unknown = sorted(set(keys) - accepted - ZOO_ONLY_KEYS - {"policy"})
    if unknown:
        closest = difflib.get_close_matches(unknown[0], sorted(accepted), n=1)
        hint = f" (did you mean {closest[0]!r}?)" if closest else ""
        raise ValueError(f"Unknown hyperparameter {unknown[0]!r} in {where}{hint}")


def constructor_arguments(model_class: type) -> set[str]:
    """
    :return: the keyword arguments ``model_class(policy, env, ...)`` takes, through the ``**kwargs`` of subclasses
        that pass them on to their base class
    """
    accepted: set[str] = set()
    for klass in model_class.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
        named = {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        accepted |= named - {"self", "policy", "env"}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return accepted
    return accepted


def iql_kwargs(preset: dict[str, Any]) -> dict[str, Any]:
    """:return: the IQL constructor arguments of a preset (``policy`` included), without the rl-zoo keys"""
    return {key: value for key, value in preset.items() if key not in ZOO_ONLY_KEYS}


#: Arguments that rl-zoo reads as schedules where written ``lin_<value>`` (its ``_preprocess_schedules``).
SCHEDULE_KEYS = ("learning_rate",)


def from_zoo_strings(arguments: dict[str, Any]) -> dict[str, Any]:
    """
    Hyperparameters as rl-zoo writes them in its files, as Python values: ``policy_kwargs`` given as a string of
    Python (``"dict(net_arch=[64, 64])"``, evaluated with ``dict`` and ``nn`` = ``torch.nn``, as rl-zoo does) and
    ``lin_<value>`` linear schedules (``learning_rate: lin_3e-4``).

    :return: a new dict
    """
    converted = dict(arguments)
    if isinstance(converted.get("policy_kwargs"), str):
        converted["policy_kwargs"] = eval(converted["policy_kwargs"], {"dict": dict, "nn": nn})  # rl-zoo's format
    for key in SCHEDULE_KEYS:
        value = arguments.get(key)
        if isinstance(value, str) and value.startswith("lin_"):
            converted[key] = LinearSchedule(float(value.removeprefix("lin_")), 0.0, 1.0)  # value x progress remaining
    return converted


def preset_arguments(dataset_id: str, finetune: bool = False, path: str | None = None) -> dict[str, Any]:
    """
    The IQL constructor arguments of a dataset's preset (see :func:`preset_for`), from which ``IQL.from_preset``
    builds the model: ``policy``, ``offline_dataset=dataset_id`` and the preset's hyperparameters, without the rl-zoo
    keys.

    The online budget of a fine-tuning preset is not an argument: it is
    ``preset_for(dataset_id, finetune=True)["n_timesteps"]``, for ``model.learn(n_timesteps)``.

    :param dataset_id: Minari dataset id
    :param finetune: the fine-tuning preset instead of the offline one
    :param path: a YAML preset file (default: the package's)
    :return: a new dict: ``IQL(arguments.pop("policy"), env, **arguments)`` builds the model
    :raises PresetNotFoundError: no preset applies to ``dataset_id``
    """
    arguments = from_zoo_strings(iql_kwargs(preset_for(dataset_id, finetune, path)))
    arguments["offline_dataset"] = dataset_id  # the id asked for, whatever an entry of a user's file says
    return arguments


def with_overrides(arguments: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """
    :param arguments: IQL arguments, e.g. a preset's
    :param overrides: arguments that replace them, except ``policy_kwargs``, which are merged into theirs (so that
        ``{"net_arch": [64, 64]}`` keeps the other network settings); rl-zoo's strings are taken
        (:func:`from_zoo_strings`). A ``replay_buffer_class`` given without ``replay_buffer_kwargs`` drops the
        arguments' buffer kwargs (a hindsight preset's ``n_sampled_goal`` fits no other buffer),
        ``policy_kwargs`` with ``actor_dropout`` replace the arguments' ``dropout``, and ``dropout`` their
        ``policy_kwargs``' ``actor_dropout``
    :return: a new dict
    """
    overrides = from_zoo_strings(overrides)
    merged = {**arguments, **overrides}
    if "policy_kwargs" in overrides:  # None (or a preset's null): no kwargs of that side
        merged["policy_kwargs"] = {**(arguments.get("policy_kwargs") or {}), **(overrides["policy_kwargs"] or {})}
    if "dropout" in overrides and "actor_dropout" not in (overrides.get("policy_kwargs") or {}):
        kwargs = dict(merged.get("policy_kwargs") or {})
        if kwargs.pop("actor_dropout", None) is not None:  # the preset's rate, which the given dropout replaces
            merged["policy_kwargs"] = kwargs
    for key in replaced_with(arguments, overrides):
        merged.pop(key, None)
    return merged


def replaced_with(arguments: dict[str, Any], overrides: dict[str, Any]) -> list[str]:
    """
    :return: the keys of ``arguments`` that go with a setting ``overrides`` replace (see :func:`with_overrides`):
        ``dropout`` where ``policy_kwargs`` give ``actor_dropout``, ``replay_buffer_kwargs`` where another
        ``replay_buffer_class`` is given without kwargs of its own
    """
    keys = []
    if "actor_dropout" in (overrides.get("policy_kwargs") or {}) and "dropout" not in overrides:
        keys.append("dropout")
    other_buffer = _class_name(overrides.get("replay_buffer_class")) != _class_name(arguments.get("replay_buffer_class"))
    if "replay_buffer_class" in overrides and other_buffer and "replay_buffer_kwargs" not in overrides:
        keys.append("replay_buffer_kwargs")
    return keys


def _class_name(value: Any) -> str | None:
    """:return: a class given by name or as the class, as its name (None: the default)"""
    return value if value is None or isinstance(value, str) else value.__name__
