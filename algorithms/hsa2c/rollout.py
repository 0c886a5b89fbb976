"""The rollout: ``n_steps`` steps in every environment of a thread, into a T x N buffer.

What the rollout keeps for the gradient depends on the network (:class:`Graph`):

* MLPs with the numpy backend (the default): nothing - :mod:`.gradient` recomputes the small
  forward pass by hand in numpy, without autograd's per-operation overhead.
* MLPs with ``backend="torch"``: each step's autograd graph of the heads and values.
* CNNs: only the convolutions' graphs; the dense layer's outputs (computed without a graph to
  choose the actions) are attached to the loss once for all T * N rows, so its backward is one
  batched matrix product instead of T small ones (Nature CNN, T=5, N=16, one thread: 100 -> 82 ms
  per update). The loss reuses the rollout's forward passes instead of a second forward over the
  whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class RolloutBuffer:
    """One thread's T x N arrays (reused from update to update) and its environments."""

    def __init__(self, model, venv, n_steps: int, rng):
        self.model = model
        self.venv = venv
        self.rng = rng
        N = venv.n
        self.obs = np.zeros((n_steps, N) + venv.obs.shape[1:], venv.obs.dtype)
        if model.discrete:
            self.actions = np.zeros((n_steps, N), np.int64)
        else:
            self.actions = np.zeros((n_steps, N, model.config["action"]["dim"]), np.float32)
        self.values = np.zeros((n_steps, N), np.float32)
        self.rewards = np.zeros((n_steps, N), np.float32)
        self.term = np.zeros((n_steps, N), bool)
        self.trunc = np.zeros((n_steps, N), bool)
        #: V(final observation) of episodes truncated at step t (bootstrap), else 0
        self.next_values = np.zeros((n_steps, N), np.float32)
        self.grad = np.zeros(model.n_params, np.float32)
        self.zero = np.zeros(model.n_params, np.float32)

    @property
    def n_samples(self) -> int:
        return self.rewards.size

    def flat(self, name: str) -> np.ndarray:
        """``obs`` or ``actions`` with the T and N axes merged (B = T * N rows)."""
        a = getattr(self, name)
        return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])


@dataclass
class Graph:
    """The autograd pieces a rollout kept for the loss (see the module doc)."""

    heads: list = field(default_factory=list)
    values: list = field(default_factory=list)
    features: list = field(default_factory=list)
    dense: list = field(default_factory=list)


def values_of(model, obs) -> np.ndarray:
    """V(obs) without a graph."""
    if model.numpy_forward is not None:
        return model.numpy_forward(obs)[1]
    import torch

    with torch.inference_mode():
        return model.value(model.obs_tensor(obs)).numpy()


def collect(buf: RolloutBuffer, keep_graph: bool):
    """Fill ``buf`` with ``n_steps`` steps of every environment under ``buf.model``.

    Returns ``(graph, last_values, episodes)``: the kept autograd pieces (None when
    ``keep_graph`` is false, an MLP's numpy path), V of the observations after the rollout, and
    the ``info["episode"]`` dicts of the true episodes that ended.
    """
    import torch

    m, venv = buf.model, buf.venv
    mlp = m.numpy_forward is not None  # MLPs have a numpy forward; CNNs run in torch
    graph = Graph() if keep_graph or not mlp else None
    episodes = []
    buf.next_values[:] = 0
    for t in range(buf.obs.shape[0]):
        buf.obs[t] = venv.obs
        obs = buf.obs[t]  # a stable copy: the graph keeps it, venv.step overwrites venv.obs
        if mlp:
            head, v = m.numpy_forward(obs)
            if graph is not None:
                h_t, v_t = m(m.obs_tensor(obs))
                graph.heads.append(h_t)
                graph.values.append(v_t)
        else:  # CNN
            f_t = m.features(m.obs_tensor(obs))
            with torch.no_grad():
                z_t = m.dense(f_t)
                h_t, v_t = m.head_outputs(z_t)
            graph.features.append(f_t)
            graph.dense.append(z_t)
            head, v = h_t.numpy(), v_t.numpy()
        a = m.sample(head, buf.rng)
        buf.actions[t] = a
        buf.values[t] = v
        _, r, term, trunc, finals, eps = venv.step(m.env_actions(a))
        buf.rewards[t] = r
        buf.term[t] = term
        buf.trunc[t] = trunc
        if finals:
            idx = [i for i in finals if trunc[i] and not term[i]]
            if idx:
                buf.next_values[t, idx] = values_of(m, np.stack([finals[i] for i in idx]))
        if eps:
            episodes.extend(eps)
    return graph, values_of(m, venv.obs), episodes
