"""
Where IQL on pixels loses what IQL on the same states learns: its critics, or its policy extraction.

A pixel PointMaze dataset (``sb3_iql/pointmaze/<maze>-pixels<size>-v0``) is its state dataset's first episodes
re-rendered, transition for transition, so the two replay buffers hold the same transitions in the same rows.
Given a model trained on each (``benchmarks/scores.py --save-models``, same method, seed and budget), this
feeds both the same ``--transitions`` dataset transitions and reports, per pair of models:

- **values**: rank correlation (Spearman) of the pixel model's V(s) with the state model's, and of each with
  minus the path length to the evaluation goal (maze cells on a shortest path from the state's cell), and each
  model's value spread (std of V);
- **advantages** A = min target Q(s, a) - V(s) of the dataset actions: rank correlation of the two models' A, and
  of their AWR weights ``min(exp(beta A), max_weight)``; each model's A std and the effective sample size of a
  batch, ESS = (sum w)^2 / (n sum w^2);
- **action ranking**: for ``--ranked-states`` of those states, both models' min target Q of the same
  ``--ranked-actions`` uniform random actions: the mean over states of the rank correlation across actions (how
  alike the two critics order the actions of one state), and each critic's spread across actions (mean std);
- **policies**: mean cosine similarity of the two deterministic actions, and the advantage of each under the
  *state* critics, A_state(s, pi(s)) (higher: the action the better critic prefers), beside that of the dataset
  actions.

If the pixel critics' advantages order the actions as the state critics' do and the pixel policy still scores
lower under the state critics, the loss is in the policy extraction (the actor's encoder); if they do not, it is
in the critics (``benchmarks/results/pixel_critics.md``: it is in the critics).

Usage::

    MINARI_DATASETS_PATH=/tmp/sb3iql_minari python benchmarks/pixel_critics.py \\
        --pairs /tmp/models/<pixel run>.zip:/tmp/models/<state run>.zip [...] --out benchmarks/results/pixel_critics
"""

import argparse
import json
from pathlib import Path
from typing import Any

import minari
import numpy as np
import torch as th
from advantage_signal import spearman  # benchmarks/advantage_signal.py

from sb3_iql.datasets.maze_controller import WaypointController
from sb3_iql.iql import IQL
from sb3_iql.iql.losses import awr_weights


def cells_to_goal(model: IQL, positions: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """
    :param model: a PointMaze model (its offline dataset's evaluation environment gives the maze)
    :param positions: ``(n, 2)`` positions (m)
    :param goal: ``(2,)`` goal position (m)
    :return: ``(n,)`` number of cell-to-cell moves on a shortest path from each position's cell to the goal's
    """
    env = minari.load_dataset(model.offline_dataset_ids[0]).recover_environment(eval_env=True)
    controller = WaypointController(env.unwrapped.maze)
    goal_cell = controller.cell_of(*goal)
    next_cell = controller.next_cell_table(goal_cell)
    hops = {goal_cell: 0}

    def count(cell: tuple[int, int]) -> int:
        if cell not in hops:
            hops[cell] = count(next_cell[cell]) + 1
        return hops[cell]

    distances = np.array([count(controller.cell_of(*position)) for position in positions])
    env.close()
    return distances


def load_with_data(path: Path) -> IQL:
    """:return: the saved model with its offline datasets loaded again into its replay buffer (CPU)"""
    model = IQL.load(path, device="cpu")
    model.reload_offline_dataset()
    return model


@th.no_grad()
def min_target_q(model: IQL, observations: Any, actions: th.Tensor) -> np.ndarray:
    """:return: the smaller target critic's ``Q(s, a)`` for scaled ``actions`` ``(batch, action_dim)``, shape ``(batch,)``"""
    return model.critic_target(observations, actions).min(dim=0).values.flatten().numpy()


@th.no_grad()
def critic_outputs(model: IQL, observations: Any, actions: th.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:return: V(s), A(s, a) = min target Q(s, a) - V(s) of the dataset actions, and the deterministic ``pi(s)``"""
    model.policy.set_training_mode(False)
    value = model.value_net(observations).flatten().numpy()
    policy_actions = model.actor(observations, deterministic=True)
    return value, min_target_q(model, observations, actions) - value, policy_actions.numpy()


def q_of_actions(model: IQL, observations: Any, actions: th.Tensor, n_states: int) -> np.ndarray:
    """:return: min target Q of ``n_states`` states with each action of ``actions`` ``(k, action_dim)``, ``(n_states, k)``"""
    return np.stack([min_target_q(model, observations, action.expand(n_states, -1)) for action in actions], axis=1)


def compare(pixel_path: Path, state_path: Path, n_transitions: int, seed: int, n_ranked: tuple[int, int]) -> dict[str, Any]:
    """
    The statistics above for one pair of models, on ``n_transitions`` rows drawn with ``seed``.

    :param n_ranked: (states, actions) of the action ranking
    """
    pixel, state = load_with_data(pixel_path), load_with_data(state_path)
    size = pixel.replay_buffer.size()
    if size != state.replay_buffer.size():
        raise ValueError(f"The buffers differ in size ({size} pixel, {state.replay_buffer.size()} state transitions)")
    rows = th.as_tensor(np.random.default_rng(seed).choice(size, n_transitions, replace=False))
    pixel_batch, state_batch = pixel.replay_buffer.gather(rows), state.replay_buffer.gather(rows)
    if not th.allclose(pixel_batch.actions, state_batch.actions) or not th.allclose(pixel_batch.rewards, state_batch.rewards):
        raise ValueError("The two buffers do not hold the same transitions in the same rows")
    v_pixel, a_pixel, pi_pixel = critic_outputs(pixel, pixel_batch.observations, pixel_batch.actions)
    v_state, a_state, pi_state = critic_outputs(state, state_batch.observations, state_batch.actions)
    goals = state_batch.observations["desired_goal"].numpy()
    if not np.allclose(goals, goals[0]):
        raise ValueError("The state dataset's goals differ: this compares models of one evaluation goal")
    goal_distance = cells_to_goal(state, state_batch.observations["achieved_goal"].numpy(), goals[0])
    result: dict[str, Any] = {"pixel_model": pixel_path.name, "state_model": state_path.name, "transitions": n_transitions}
    result["value_spearman"] = spearman(v_pixel, v_state)
    result["value_path_spearman_pixel"] = spearman(v_pixel, -goal_distance)
    result["value_path_spearman_state"] = spearman(v_state, -goal_distance)
    result["value_std_pixel"], result["value_std_state"] = float(v_pixel.std()), float(v_state.std())
    result["advantage_spearman"] = spearman(a_pixel, a_state)
    result["advantage_std_pixel"], result["advantage_std_state"] = float(a_pixel.std()), float(a_state.std())
    weights = {}
    for name, model, advantage in (("pixel", pixel, a_pixel), ("state", state, a_state)):
        weights[name] = awr_weights(th.as_tensor(advantage), model.beta, model.max_weight).numpy()
        batches = weights[name][: len(advantage) // model.batch_size * model.batch_size].reshape(-1, model.batch_size)
        result[f"batch_ess_{name}"] = float(np.mean(batches.sum(1) ** 2 / (model.batch_size * (batches**2).sum(1))))
    result["weight_spearman"] = spearman(weights["pixel"], weights["state"])
    n_states, n_actions = n_ranked
    generator = th.Generator().manual_seed(seed)
    actions = th.rand(n_actions, pixel_batch.actions.shape[1], generator=generator) * 2 - 1
    q_pixel = q_of_actions(pixel, pixel.replay_buffer.gather(rows[:n_states]).observations, actions, n_states)
    q_state = q_of_actions(state, state.replay_buffer.gather(rows[:n_states]).observations, actions, n_states)
    result["action_ranking_spearman"] = float(np.mean([spearman(a, b) for a, b in zip(q_pixel, q_state)]))
    result["q_action_spread_pixel"], result["q_action_spread_state"] = (
        float(q_pixel.std(1).mean()),
        float(q_state.std(1).mean()),
    )
    cosine = (pi_pixel * pi_state).sum(1) / (np.linalg.norm(pi_pixel, axis=1) * np.linalg.norm(pi_state, axis=1) + 1e-8)
    result["policy_cosine"] = float(cosine.mean())
    for name, actions in (("pixel_policy", pi_pixel), ("state_policy", pi_state), ("dataset", state_batch.actions.numpy())):
        q_values = min_target_q(state, state_batch.observations, th.as_tensor(actions, dtype=th.float32))
        result[f"state_advantage_{name}"] = float((q_values - v_state).mean())
    return result


def write_markdown(path: Path, results: list[dict[str, Any]]) -> None:
    columns = [name for name in results[0] if name not in ("pixel_model", "state_model", "transitions")]
    lines = [
        "# IQL on pixels against IQL on the same states (`benchmarks/pixel_critics.py`)",
        "",
        f"{results[0]['transitions']} dataset transitions, the same for both models of a pair. Models:",
        "",
        *[f"- pair {i}: `{r['pixel_model']}` against `{r['state_model']}`" for i, r in enumerate(results)],
        "",
        "| statistic | " + " | ".join(f"pair {i}" for i in range(len(results))) + " |",
        "|---|" + "---|" * len(results),
        *[f"| {name} | " + " | ".join(f"{r[name]:.3f}" for r in results) + " |" for name in columns],
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", required=True, help="PIXEL_MODEL.zip:STATE_MODEL.zip, one per pair")
    parser.add_argument("--transitions", type=int, default=4096, help="dataset transitions compared")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rows and the ranked actions drawn")
    parser.add_argument("--ranked-states", type=int, default=500, help="states of the action ranking")
    parser.add_argument("--ranked-actions", type=int, default=16, help="random actions ranked in each of them")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pixel_critics"), help="path without suffix")
    args = parser.parse_args()
    th.set_num_threads(1)
    results = []
    for pair in args.pairs:
        pixel_path, state_path = (Path(part) for part in pair.split(":"))
        results.append(compare(pixel_path, state_path, args.transitions, args.seed, (args.ranked_states, args.ranked_actions)))
        print(json.dumps(results[-1], indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(args.out.with_suffix(".md"), results)


if __name__ == "__main__":
    main()
