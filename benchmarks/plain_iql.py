"""
The plain baseline of ``benchmarks/speed.py``: what a straightforward single-file PyTorch IQL loop (CORL style) does.

Two separate Q MLPs, a V MLP, a Gaussian actor, a NumPy buffer sampled with ``np.random`` and converted with
``torch.as_tensor`` at each step, per-parameter (non-foreach) Adam, ``.item()`` of the three losses at each step, a
per-parameter Polyak update. The same math and order as ``sb3_iql.IQL``'s reference mode: V, actor with the new V,
Q with the new V, Polyak.
"""

import math

import numpy as np
import torch as th
from torch import nn

from sb3_iql.common.synthetic import SyntheticTransitions

BATCH_SIZE = 256
HIDDEN = 256
#: Hyperparameters (AntMaze settings; speed does not depend on them).
EXPECTILE, BETA, MAX_WEIGHT, GAMMA, TAU, LR = 0.9, 10.0, 100.0, 0.99, 0.005, 3e-4
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
OFFLINE_STEPS = 1_000_000


def plain_mlp(in_dim: int, out_dim: int, output_tanh: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU()]
    layers.append(nn.Linear(HIDDEN, out_dim))
    if output_tanh:
        layers.append(nn.Tanh())
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, math.sqrt(2))
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class PlainTwinQ(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int):
        super().__init__()
        self.q1 = plain_mlp(obs_dim + action_dim, 1)
        self.q2 = plain_mlp(obs_dim + action_dim, 1)

    def both(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        inputs = th.cat([obs, actions], dim=1)
        return self.q1(inputs).squeeze(-1), self.q2(inputs).squeeze(-1)

    def forward(self, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
        return th.min(*self.both(obs, actions))


class PlainPolicy(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int):
        super().__init__()
        self.net = plain_mlp(obs_dim, action_dim, output_tanh=True)
        self.log_std = nn.Parameter(th.zeros(action_dim))

    def forward(self, obs: th.Tensor) -> th.distributions.Normal:
        return th.distributions.Normal(self.net(obs), self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp())


class NumpyBuffer:
    """Preallocated NumPy arrays; each sample is fancy-indexed and converted with ``torch.as_tensor``."""

    def __init__(self, obs_dim: int, action_dim: int, capacity: int, device: th.device):
        self.observations = np.zeros((capacity, obs_dim), np.float32)
        self.next_observations = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.rewards = np.zeros((capacity, 1), np.float32)
        self.dones = np.zeros((capacity, 1), np.float32)
        self.size, self.device = 0, device

    def load(self, data: SyntheticTransitions) -> None:
        n = len(data.rewards)
        self.observations[:n] = data.observations
        self.next_observations[:n] = data.next_observations
        self.actions[:n] = data.actions
        self.rewards[:n, 0] = data.rewards
        self.dones[:n, 0] = data.dones * (1.0 - data.timeouts)
        self.size = n

    def sample(self, batch_size: int) -> list[th.Tensor]:
        indices = np.random.randint(0, self.size, size=batch_size)
        arrays = (self.observations, self.actions, self.rewards, self.next_observations, self.dones)
        return [th.as_tensor(array[indices], device=self.device) for array in arrays]


class PlainIQL:
    """CORL-style IQL trainer (same math and order of updates as ``sb3_iql.IQL``)."""

    def __init__(self, obs_dim: int, action_dim: int, device: th.device, seed: int = 0):
        th.manual_seed(seed)
        np.random.seed(seed)
        self.device = device
        self.qf = PlainTwinQ(obs_dim, action_dim).to(device)
        self.q_target = PlainTwinQ(obs_dim, action_dim).to(device)
        self.q_target.load_state_dict(self.qf.state_dict())
        self.q_target.requires_grad_(False)
        self.vf = plain_mlp(obs_dim, 1).to(device)
        self.actor = PlainPolicy(obs_dim, action_dim).to(device)
        self.v_optimizer = th.optim.Adam(self.vf.parameters(), lr=LR, foreach=False)
        self.q_optimizer = th.optim.Adam(self.qf.parameters(), lr=LR, foreach=False)
        self.actor_optimizer = th.optim.Adam(self.actor.parameters(), lr=LR, foreach=False)
        self.actor_lr_schedule = th.optim.lr_scheduler.CosineAnnealingLR(self.actor_optimizer, OFFLINE_STEPS)
        self.buffer: NumpyBuffer | None = None

    def load(self, data: SyntheticTransitions) -> None:
        self.buffer = NumpyBuffer(data.observations.shape[1], data.actions.shape[1], len(data.rewards), self.device)
        self.buffer.load(data)

    def train_step(self, batch: list[th.Tensor]) -> dict[str, float]:
        observations, actions, rewards, next_observations, dones = batch
        rewards, dones = rewards.squeeze(-1), dones.squeeze(-1)
        log = {}
        # V
        with th.no_grad():
            target_q = self.q_target(observations, actions)
        v = self.vf(observations).squeeze(-1)
        diff = target_q - v
        v_loss = (th.abs(EXPECTILE - (diff < 0).float()) * diff**2).mean()
        log["value_loss"] = v_loss.item()
        self.v_optimizer.zero_grad()
        v_loss.backward()
        self.v_optimizer.step()
        # Actor, with the new V
        with th.no_grad():
            adv = target_q - self.vf(observations).squeeze(-1)
            exp_adv = th.exp(BETA * adv).clamp(max=MAX_WEIGHT)
        bc_losses = -self.actor(observations).log_prob(actions).sum(-1)
        policy_loss = th.mean(exp_adv * bc_losses)
        log["actor_loss"] = policy_loss.item()
        self.actor_optimizer.zero_grad()
        policy_loss.backward()
        self.actor_optimizer.step()
        self.actor_lr_schedule.step()
        # Q, towards r + gamma * (1 - done) * V'(s') with the new V
        with th.no_grad():
            next_v = self.vf(next_observations).squeeze(-1)
            targets = rewards + (1.0 - dones) * GAMMA * next_v
        qs = self.qf.both(observations, actions)
        q_loss = sum(nn.functional.mse_loss(q, targets) for q in qs)
        log["critic_loss"] = q_loss.item()
        self.q_optimizer.zero_grad()
        q_loss.backward()
        self.q_optimizer.step()
        # Polyak
        with th.no_grad():
            for target_param, param in zip(self.q_target.parameters(), self.qf.parameters()):
                target_param.data.copy_((1 - TAU) * target_param.data + TAU * param.data)
        return log

    def run(self, n_updates: int) -> None:
        assert self.buffer is not None
        for _ in range(n_updates):
            self.train_step(self.buffer.sample(BATCH_SIZE))
