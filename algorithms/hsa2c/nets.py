"""Actor-critic networks whose torch parameters are views into one flat float32 numpy buffer.

* ``mlp``          vector observations: separate policy and value MLPs (64-64 tanh by default,
                   as Stable-Baselines3's ``MlpPolicy``), orthogonal initialisation.
* ``nature_cnn``   image observations (C, H, W) with H, W >= 36: the DQN/A3C "Nature" trunk
                   (32x8x8/4, 64x4x4/2, 64x3x3/1, 512) shared by the policy and value heads.
* ``minatar_cnn``  small images (MinAtar's 10x10): one 16x3x3 convolution and 128 units.

Heads: categorical logits for ``Discrete`` actions, a diagonal Gaussian (state-independent
log standard deviation) for ``Box`` actions.

``model.flat`` is the numpy buffer holding every parameter; ``model.set_flat(w)`` copies a
parameter vector in (one memcpy), ``model.flat_grad()`` returns the gradient in the same layout.
A model's JSON config (``model.config``) fully describes its architecture.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
LOG_2PI = math.log(2.0 * math.pi)


class UnsupportedSpace(ValueError):
    """An observation or action space the networks cannot handle (one-line message)."""


def gaussian_log_prob_entropy(zz, log_std):
    """log pi(a|s) and the entropy of a diagonal Gaussian from ``zz``, the squared standardised
    distances ((a - mean) / std) ** 2 [B, A], and the log standard deviations (numpy or torch):
    sums over the last axis (an entropy per row when ``log_std`` is [B, A], one when it is [A])."""
    return (-0.5 * zz - log_std - 0.5 * LOG_2PI).sum(-1), (0.5 + 0.5 * LOG_2PI + log_std).sum(-1)


# ----------------------------------------------------------------------------- configs


def model_config(observation_space, action_space, hidden=(64, 64), activation="tanh",
                 log_std_init: float = 0.0, arch: str | None = None) -> dict:
    """The JSON architecture description for a pair of Gymnasium spaces."""
    from gymnasium import spaces

    if isinstance(action_space, spaces.Discrete):
        action = {"type": "discrete", "n": int(action_space.n), "start": int(action_space.start)}
    elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1 and \
            np.issubdtype(action_space.dtype, np.floating):
        action = {"type": "box", "dim": int(action_space.shape[0]),
                  "low": np.asarray(action_space.low, np.float64).tolist(),
                  "high": np.asarray(action_space.high, np.float64).tolist()}
    else:
        raise UnsupportedSpace(f"unsupported action space {action_space}: only Discrete and 1-D float Box "
                               "actions are supported")
    if isinstance(observation_space, spaces.Discrete):
        obs = {"shape": [int(observation_space.n)], "onehot": True, "scale": 1.0}
        kind = "mlp"
    elif isinstance(observation_space, spaces.Box):
        shape = [int(s) for s in observation_space.shape]
        if len(shape) == 0 or int(np.prod(shape)) == 0:
            raise UnsupportedSpace(f"unsupported observation space {observation_space}: empty Box")
        image = len(shape) == 3
        scale = 1.0 / 255.0 if observation_space.dtype == np.uint8 and float(np.max(observation_space.high)) > 1 \
            else 1.0
        obs = {"shape": shape, "onehot": False, "scale": scale}
        if image:
            kind = "nature_cnn" if min(shape[1:]) >= 36 else "minatar_cnn"
        else:
            kind = "mlp"
    else:
        raise UnsupportedSpace(f"unsupported observation space {type(observation_space).__name__}: only Box "
                               "(vectors, or images as channels x height x width) and Discrete are supported")
    if arch is not None:
        if arch not in ("mlp", "nature_cnn", "minatar_cnn"):
            raise UnsupportedSpace(f"unknown network {arch!r}; choose mlp, nature_cnn or minatar_cnn")
        if arch != "mlp" and len(obs["shape"]) != 3:
            raise UnsupportedSpace(f"network {arch} needs image observations (C, H, W), got shape {obs['shape']}")
        kind = arch
    if activation not in ACTIVATIONS:
        raise UnsupportedSpace(f"unknown activation {activation!r}; choose {', '.join(ACTIVATIONS)}")
    return {"kind": kind, "obs": obs, "action": action, "hidden": [int(h) for h in hidden],
            "activation": activation, "log_std_init": float(log_std_init)}


# ----------------------------------------------------------------------------- modules


def _orthogonal(module: nn.Module, gain: float) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.orthogonal_(module.weight, gain=gain)
        nn.init.zeros_(module.bias)


def _mlp(sizes, act) -> nn.Sequential:
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers)


class _AttachedDense(torch.autograd.Function):
    """``relu(f @ weight.T + bias)`` given its value ``z``, computed earlier without a graph.

    The rollout computes each step's dense layer without a graph (to choose actions); the loss
    attaches all T * N rows at once here, so the backward is one batched matrix product per
    gradient and the forward is not computed a second time.
    """

    @staticmethod
    def forward(ctx, f, weight, bias, z):
        ctx.save_for_backward(f, weight, z)
        return z.clone()

    @staticmethod
    def backward(ctx, gz):
        f, weight, z = ctx.saved_tensors
        ga = gz * (z > 0)
        gf = ga @ weight if ctx.needs_input_grad[0] else None
        return gf, ga.t() @ f, ga.sum(0), None


class ActorCritic(nn.Module):
    """forward(obs tensor) -> (logits or Gaussian means [B, A], values [B])."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        kind, obs, action = config["kind"], config["obs"], config["action"]
        self.discrete = action["type"] == "discrete"
        n_out = action["n"] if self.discrete else action["dim"]
        act = ACTIVATIONS[config["activation"]]
        self.obs_scale = float(obs["scale"])
        self.onehot = bool(obs.get("onehot", False))
        self.obs_shape = tuple(obs["shape"])
        # NHWC input for the Nature CNN: oneDNN's convolutions are ~8-12 % faster forward+backward
        # (batch 16-80, one thread); the weights (views of the flat buffer) stay NCHW
        self.channels_last = kind == "nature_cnn"
        if kind == "mlp":
            n_in = int(np.prod(self.obs_shape))
            hidden = list(config["hidden"])
            self.pi_body = _mlp([n_in] + hidden, act)
            self.vf_body = _mlp([n_in] + hidden, act)
            feat = hidden[-1] if hidden else n_in
            self.trunk = None
        else:
            c, h, w = self.obs_shape
            if kind == "nature_cnn":
                convs = [nn.Conv2d(c, 32, 8, 4), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, 1), nn.ReLU(), nn.Flatten()]
                feat = 512
            else:
                convs = [nn.Conv2d(c, 16, 3, 1), nn.ReLU(), nn.Flatten()]
                feat = 128
            body = nn.Sequential(*convs)
            with torch.no_grad():
                n_flat = body(torch.zeros(1, c, h, w)).shape[1]
            self.trunk = nn.Sequential(body, nn.Linear(n_flat, feat), nn.ReLU())
            self.pi_body = self.vf_body = None
        self.pi_head = nn.Linear(feat, n_out)
        self.vf_head = nn.Linear(feat, 1)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((n_out,), float(config.get("log_std_init", 0.0))))
            self.low = np.asarray(action["low"], np.float32)
            self.high = np.asarray(action["high"], np.float32)
        # Stable-Baselines3's initialisation: orthogonal, gain sqrt(2) in the bodies, 0.01 policy, 1 value
        self.apply(lambda m: _orthogonal(m, math.sqrt(2.0)))
        _orthogonal(self.pi_head, 0.01)
        _orthogonal(self.vf_head, 1.0)
        self._flatten()
        self.numpy_forward = self._mlp_numpy if kind == "mlp" else None

    # -- flat parameter buffer ------------------------------------------------------
    def _flatten(self) -> None:
        params = list(self.parameters())
        n = sum(p.numel() for p in params)
        self.flat = np.zeros(n, np.float32)
        self.flat_t = torch.from_numpy(self.flat)
        self.slices = []
        self._np_layers = None
        o = 0
        for p in params:
            k = p.numel()
            self.flat[o:o + k] = p.detach().reshape(-1).numpy()
            p.data = self.flat_t[o:o + k].view_as(p)
            self.slices.append((o, o + k))
            o += k
        self._params = params

    @property
    def n_params(self) -> int:
        return self.flat.size

    def set_flat(self, w: np.ndarray) -> None:
        np.copyto(self.flat, w)

    def flat_grad(self, out: np.ndarray | None = None) -> np.ndarray:
        out = np.zeros(self.flat.size, np.float32) if out is None else out
        for p, (a, b) in zip(self._params, self.slices):
            if p.grad is None:
                out[a:b] = 0
            else:
                out[a:b] = p.grad.reshape(-1).numpy()
        return out

    def loss_grad(self, loss: torch.Tensor, out: np.ndarray) -> np.ndarray:
        """d loss / d parameters into the flat ``out`` (autograd, without touching ``.grad``)."""
        for gr, (a, b) in zip(torch.autograd.grad(loss, self._params), self.slices):
            out[a:b] = gr.reshape(-1).numpy()
        return out

    # -- forward ----------------------------------------------------------------------
    def obs_tensor(self, obs) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(obs))
        if self.onehot:
            return torch.nn.functional.one_hot(x.long().reshape(-1), self.obs_shape[0]).float()
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if x.dtype != torch.float32:
            x = x.float()
        if self.obs_scale != 1.0:
            x = x * self.obs_scale
        if self.trunk is None:
            x = x.reshape(x.shape[0], -1)
        return x

    def forward(self, x: torch.Tensor):
        if self.trunk is None:
            return self.pi_head(self.pi_body(x)), self.vf_head(self.vf_body(x)).squeeze(-1)
        return self.head_outputs(self.dense(self.features(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """CNN models: the flattened output of the convolutions (what ``dense`` takes)."""
        return self.trunk[0](x)

    def dense(self, f: torch.Tensor) -> torch.Tensor:
        """CNN models: the dense layer (and its ReLU) on ``features``."""
        return self.trunk[2](self.trunk[1](f))

    def attach_dense(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``dense(f)`` when its value ``z`` is already known (computed without a graph): the same
        value and gradient without computing the layer again."""
        lin = self.trunk[1]
        return _AttachedDense.apply(f, lin.weight, lin.bias, z)

    def head_outputs(self, z: torch.Tensor):
        """(logits or means, values) from the dense layer's output."""
        return self.pi_head(z), self.vf_head(z).squeeze(-1)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        if self.trunk is None:
            return self.vf_head(self.vf_body(x)).squeeze(-1)
        return self.vf_head(self.trunk(x)).squeeze(-1)

    def _mlp_numpy(self, obs, activations: list | None = None):
        """forward() in numpy for MLPs (several times faster than torch for small batches).

        ``activations`` (a list) receives each body's activations, the policy body's then the value
        body's, each a list from the preprocessed observations to the last hidden layer (what the
        gradient, :meth:`mlp_loss_grad`, needs).
        """
        if self._np_layers is None:
            self._np_layers = []
            for body in (self.pi_body, self.vf_body):
                self._np_layers.append([(m.weight.detach().numpy().T, m.bias.detach().numpy())
                                        for m in body if isinstance(m, nn.Linear)])
            self._np_heads = [(h.weight.detach().numpy().T, h.bias.detach().numpy())
                              for h in (self.pi_head, self.vf_head)]
        x = self._obs_numpy(obs)
        act = np.tanh if self.config["activation"] == "tanh" else (lambda z: np.maximum(z, 0, out=z))
        outs = []
        for layers, (hw, hb) in zip(self._np_layers, self._np_heads):
            h = x
            if activations is not None:
                activations.append([x])
            for w, b in layers:
                h = act(h @ w + b)
                if activations is not None:
                    activations[-1].append(h)
            outs.append(h @ hw + hb)
        return outs[0], outs[1][:, 0]

    def _obs_numpy(self, obs) -> np.ndarray:
        if self.onehot:
            return np.eye(self.obs_shape[0], dtype=np.float32)[np.asarray(obs).reshape(-1).astype(np.int64)]
        x = np.asarray(obs, np.float32).reshape(len(obs), -1)
        return x * np.float32(self.obs_scale) if self.obs_scale != 1.0 else x

    def _slice_of(self, p) -> tuple[int, int]:
        for q, sl in zip(self._params, self.slices):
            if q is p:
                return sl
        raise KeyError("not a parameter of this model")

    def mlp_loss_grad(self, obs, actions, advantages, returns, vf_coef: float, ent_coef: float,
                      normalize_advantage: bool, out: np.ndarray, parts: dict | None = None) -> np.ndarray:
        """Gradient of :func:`losses.a2c_loss` for an MLP model, by hand in numpy, into ``out``.

        The same value as torch's autograd on the same loss (the tests compare them), without
        autograd's per-operation overhead, which dominates for small MLPs and small batches.
        ``parts`` (a dict) receives the loss's parts as floats, as ``a2c_loss`` returns them.
        """
        if self.trunk is not None:
            raise TypeError("mlp_loss_grad needs an MLP model")
        activations = []
        z, v = self._mlp_numpy(obs, activations)
        B = z.shape[0]
        tanh = self.config["activation"] == "tanh"
        adv = np.asarray(advantages, np.float32).reshape(-1)
        if normalize_advantage and B > 1:
            adv = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
        ret = np.asarray(returns, np.float32).reshape(-1)
        out[:] = 0
        inv_b = np.float32(1.0 / B)
        if self.discrete:
            zmax = z.max(1, keepdims=True)
            e = np.exp(z - zmax)
            p = e / e.sum(1, keepdims=True)
            logp_all = (z - zmax) - np.log(e.sum(1, keepdims=True))
            H = -(p * logp_all).sum(1, keepdims=True)
            onehot = np.zeros_like(z)
            onehot[np.arange(B), np.asarray(actions).reshape(-1).astype(np.int64)] = 1.0
            dz = -(adv[:, None] * inv_b) * (onehot - p) + np.float32(ent_coef) * inv_b * p * (logp_all + H)
            if parts is not None:
                parts["policy_loss"] = -float(np.mean(adv * (logp_all * onehot).sum(1)))
                parts["entropy"] = float(H.mean())
        else:
            a = np.asarray(actions, np.float32).reshape(z.shape)
            log_std = self.log_std.detach().numpy()
            inv_var = np.exp(-2.0 * log_std).astype(np.float32)
            diff = a - z
            dz = -(adv[:, None] * inv_b) * diff * inv_var
            zz = diff * diff * inv_var
            lo, hi = self._slice_of(self.log_std)
            out[lo:hi] = (-(adv[:, None] * inv_b) * (zz - 1.0)).sum(0) - np.float32(ent_coef)
            if parts is not None:
                logp, entropy = gaussian_log_prob_entropy(zz, log_std)
                parts["policy_loss"] = -float(np.mean(adv * logp))
                parts["entropy"] = float(entropy)
        dv = (np.float32(2.0 * vf_coef) * inv_b) * (v - ret)
        if parts is not None:
            parts["value_loss"] = float(np.mean((v - ret) ** 2))
        for body, head, hs, dout in ((self.pi_body, self.pi_head, activations[0], dz),
                                     (self.vf_body, self.vf_head, activations[1], dv[:, None])):
            lins = [m for m in body if isinstance(m, nn.Linear)]
            lo, hi = self._slice_of(head.weight)
            out[lo:hi] = (dout.T @ hs[-1]).reshape(-1)
            lo, hi = self._slice_of(head.bias)
            out[lo:hi] = dout.sum(0)
            dh = dout @ head.weight.detach().numpy()
            for k in range(len(lins) - 1, -1, -1):
                h = hs[k + 1]
                da = dh * (1.0 - h * h) if tanh else dh * (h > 0)
                lin = lins[k]
                lo, hi = self._slice_of(lin.weight)
                out[lo:hi] = (da.T @ hs[k]).reshape(-1)
                lo, hi = self._slice_of(lin.bias)
                out[lo:hi] = da.sum(0)
                if k:
                    dh = da @ lin.weight.detach().numpy()
        return out

    def predict_head(self, obs) -> np.ndarray:
        """Deterministic actions (as stored for learning) for a batch of observations."""
        if self.numpy_forward is not None:
            head = self.numpy_forward(obs)[0]
        else:
            with torch.inference_mode():
                head = self.forward(self.obs_tensor(obs))[0].numpy()
        return self.sample(head, None, deterministic=True)

    # -- distributions ------------------------------------------------------------------
    def log_prob_entropy(self, head: torch.Tensor, actions: torch.Tensor):
        """log pi(a|s) and the entropy of pi(.|s) for a batch."""
        if self.discrete:
            logp_all = torch.log_softmax(head, -1)
            logp = logp_all.gather(1, actions.long().reshape(-1, 1)).squeeze(1)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            return logp, entropy
        log_std = self.log_std.expand_as(head)
        z = (actions - head) * torch.exp(-log_std)
        return gaussian_log_prob_entropy(z * z, log_std)

    def sample(self, head: np.ndarray, rng: np.random.Generator, deterministic: bool = False) -> np.ndarray:
        """Actions from the head's output (numpy), with a numpy random stream (reproducible)."""
        if self.discrete:
            if deterministic:
                return head.argmax(-1)
            # Gumbel-max: argmax(logits + Gumbel noise) is a sample of softmax(logits)
            g = -np.log(-np.log(rng.random(head.shape) + 1e-20) + 1e-20)
            return (head + g).argmax(-1)
        if deterministic:
            return head.astype(np.float32)
        std = np.exp(self.log_std.detach().numpy())
        return (head + std * rng.standard_normal(head.shape)).astype(np.float32)

    def env_actions(self, actions: np.ndarray) -> np.ndarray:
        """What the environment receives: Box actions clipped to the bounds, Discrete shifted by start."""
        if self.discrete:
            return actions + self.config["action"]["start"]
        return np.clip(actions, self.low, self.high)

    @torch.inference_mode()
    def act(self, obs, rng: np.random.Generator | None = None, deterministic: bool = False):
        """(actions as stored for learning, values) for a batch of observations."""
        head, v = self.forward(self.obs_tensor(obs))
        return self.sample(head.numpy(), rng, deterministic), v.numpy()


def build_model(config: dict, seed: int | None = None) -> ActorCritic:
    """A fresh model; its initialisation depends only on ``seed`` (not on torch's global state)."""
    if seed is None:
        return ActorCritic(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return ActorCritic(config)
