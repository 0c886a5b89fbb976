"""Advantage actor-critic maths: n-step returns / GAE and the A2C loss.

Conventions for a rollout of ``T`` steps over ``N`` environments (arrays ``[T, N]``):

* ``rewards[t]``      reward of the transition taken at step ``t``;
* ``values[t]``       V(s_t) under the parameters that collected the rollout;
* ``terminated[t]``   the transition ended the episode in a terminal state: no bootstrap;
* ``truncated[t]``    the episode was cut (time limit): bootstrap from V(final observation);
* ``next_values[t]``  V of the true next state s_{t+1} where it matters, i.e. V(final
                      observation) on truncated steps (other entries are ignored);
* ``last_values``     V(s_T) of the observation after the rollout ([N]).

With autoreset the observation that follows a finished episode is the first one of the next
episode, so ``values[t + 1]`` must never be used across a ``terminated | truncated`` step.

TD error and GAE:  delta_t = r_t + gamma * V'(t) * (1 - terminated_t) - V(s_t), where V'(t) is
``next_values[t]`` on truncated steps, ``values[t + 1]`` otherwise (``last_values`` at the end);
A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1} with done = terminated | truncated.
``lam = 1`` gives the classic n-step returns R_t = r_t + gamma * R_{t+1} bootstrapped at the
end of the rollout (A3C/A2C), ``returns = advantages + values``.
"""

from __future__ import annotations

import numpy as np


def compute_advantages(rewards, values, terminated, truncated, next_values, last_values,
                       gamma: float = 0.99, gae_lambda: float = 1.0):
    """Returns ``(advantages, returns)`` as float32 ``[T, N]`` arrays (see the module doc)."""
    rewards = np.asarray(rewards, np.float64)
    values = np.asarray(values, np.float64)
    terminated = np.asarray(terminated, bool)
    truncated = np.asarray(truncated, bool) & ~terminated
    next_values = np.asarray(next_values, np.float64)
    T = rewards.shape[0]
    adv = np.zeros_like(rewards)
    last = np.zeros(rewards.shape[1:], np.float64)
    following = np.asarray(last_values, np.float64)
    for t in range(T - 1, -1, -1):
        v_next = np.where(truncated[t], next_values[t], following)
        v_next = np.where(terminated[t], 0.0, v_next)
        delta = rewards[t] + gamma * v_next - values[t]
        done = terminated[t] | truncated[t]
        last = delta + gamma * gae_lambda * np.where(done, 0.0, last)
        adv[t] = last
        following = values[t]
    return adv.astype(np.float32), (adv + values).astype(np.float32)


def nstep_returns(rewards, terminated, truncated, next_values, last_values, gamma: float = 0.99):
    """Plain n-step discounted returns (no value baseline involved): the lam = 1 case."""
    rewards = np.asarray(rewards, np.float64)
    terminated = np.asarray(terminated, bool)
    truncated = np.asarray(truncated, bool) & ~terminated
    out = np.zeros_like(rewards)
    R = np.asarray(last_values, np.float64).copy()
    for t in range(rewards.shape[0] - 1, -1, -1):
        R = np.where(truncated[t], np.asarray(next_values, np.float64)[t], R)
        R = np.where(terminated[t], 0.0, R)
        R = rewards[t] + gamma * R
        out[t] = R
    return out.astype(np.float32)


def a2c_loss(logp, entropy, values, advantages, returns, vf_coef: float = 0.5, ent_coef: float = 0.0,
             normalize_advantage: bool = False):
    """The A2C objective to minimise, and its parts (torch tensors, all flat ``[B]``).

    policy = -mean(A * log pi(a|s)), value = mean((R - V(s))^2), entropy = mean(H[pi(.|s)]);
    loss = policy + vf_coef * value - ent_coef * entropy. ``advantages`` and ``returns`` are
    constants (no gradient flows into them).
    """
    import torch

    adv = advantages.detach()
    if normalize_advantage and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    policy_loss = -(adv * logp).mean()
    value_loss = torch.nn.functional.mse_loss(values, returns.detach())
    entropy_mean = entropy.mean()
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy_mean
    return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy_mean}


def clip_grad_norm_(flat_grad: np.ndarray, max_norm: float | None) -> float:
    """Scale the flat gradient in place so that its L2 norm is at most ``max_norm``; returns the norm."""
    norm = float(np.sqrt(np.dot(flat_grad, flat_grad)))
    if max_norm is not None and max_norm > 0 and norm > max_norm:
        flat_grad *= np.float32(max_norm / (norm + 1e-6))
    return norm
