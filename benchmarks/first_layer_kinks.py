"""
Where the first hidden layer's ReLU kinks sit in a dataset's observations at initialisation, for the settings of
``benchmarks/scores.py`` methods. Unit ``j`` computes ``h_j(x) = w_j . x + b_j`` on the network's input ``x``
(observations, normalised when the method says so; the critics also take the action); its kink is ``h_j = 0``.
Its offset is ``mean(h_j) / std(h_j)`` over the data: 0 when the kink passes through the data's mean, large when
it lies outside the data. With every offset at 0 (zero biases on normalised inputs) all kinks meet at the mean and
the first layer starts as a fan of half-spaces around one point; spread offsets tile the data.

Prints, per method and network: quantiles of ``|offset|`` over units (and seeds) and the share of units active on
between 5% and 95% of the data (kinks that split it).

Usage::

    MINARI_DATASETS_PATH=/tmp/sb3iql_minari python benchmarks/first_layer_kinks.py \\
        --dataset sb3_iql/pointmaze/large-stitch-v0 --methods iql-ref+ddpgawr0.01+dropout \\
        iql-ref+ddpgawr0.01+dropout+obsnorm iql-ref+ddpgawr0.01+dropout+obsnorm+spread
"""

import argparse

import minari
import torch as th
from scores import RunConfig, _iql_arguments
from stable_baselines3.common.type_aliases import PyTorchObs

from sb3_iql import IQL
from sb3_iql.presets import preset_arguments


def first_layer_preactivations(model: IQL, obs: PyTorchObs, actions: th.Tensor) -> dict[str, th.Tensor]:
    """
    :param obs: observations as the replay buffer samples them, ``(n, *shape)`` or a dict of them
    :param actions: the scaled dataset actions, ``(n, action_dim)``
    :return: per network, the first hidden layer's pre-activations on the data, shape ``(units, n)``
    """
    policy = model.policy
    with th.no_grad():
        actor_in = policy.actor.extract_features(obs, policy.actor.features_extractor)
        value_in = policy.value_net.extract_features(obs, policy.value_net.features_extractor)
        critic_features = policy.critic.extract_features(obs, policy.critic.features_extractor)
        critic_in = th.cat([critic_features, actions], dim=-1)
        critic_layer = policy.critic.q_networks[0]
        return {
            "actor": policy.actor.latent_pi[0](actor_in).T,
            "value": policy.value_net.v_network[0][0](value_in).T,
            # every critic's units: (n_critics, n, units) -> (n_critics * units, n)
            "critics": critic_layer(critic_in.expand(critic_layer.weight.shape[0], -1, -1)).permute(0, 2, 1).flatten(0, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="sb3_iql/pointmaze/large-stitch-v0")
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--net-arch", nargs="+", type=int, default=[256, 256])
    parser.add_argument("--samples", type=int, default=20_000, help="observations drawn from the dataset")
    args = parser.parse_args()
    th.set_num_threads(1)
    dataset = minari.load_dataset(args.dataset)
    print(f"{args.dataset}, {args.net_arch} networks, seeds {args.seeds}, {args.samples} observations")
    print("| method | network | median abs(offset) | 90% quantile | units splitting the data (5-95% active) |")
    print("|---|---|---:|---:|---:|")
    for method in args.methods:
        # a run's settings; the budget and evaluation fields do not enter the hyperparameters
        config = RunConfig(args.dataset, dataset.total_steps, method, 0, 1, 1, 1, tuple(args.net_arch), 256)
        offsets: dict[str, list[th.Tensor]] = {}
        splitting: dict[str, list[th.Tensor]] = {}
        for seed in args.seeds:
            model = IQL(
                preset_arguments(args.dataset)["policy"],
                env=None,
                offline_dataset=dataset,
                seed=seed,
                **_iql_arguments(config.hyperparameters(), config.net_arch),
            )
            batch = model.replay_buffer.sample(args.samples)  # SB3's sampling, seeded by the model's seed
            for name, pre in first_layer_preactivations(model, batch.observations, batch.actions).items():
                offsets.setdefault(name, []).append((pre.mean(dim=1) / pre.std(dim=1)).abs())
                active = (pre > 0).float().mean(dim=1)
                splitting.setdefault(name, []).append(((active > 0.05) & (active < 0.95)).float())
        for name in offsets:
            values = th.cat(offsets[name])
            share = th.cat(splitting[name]).mean().item()
            print(
                f"| `{method}` | {name} | {values.median().item():.2f} | {values.quantile(0.9).item():.2f} "
                f"| {100 * share:.0f}% |"
            )


if __name__ == "__main__":
    main()
