"""The A2C gradient of a rollout, from :func:`.losses.a2c_loss` - by one of two backends.

* ``numpy`` (MLPs with ``backend="auto"``): :meth:`.nets.ActorCritic.mlp_loss_grad`, the
  gradient of the same loss derived by hand (tests hold it to autograd's for every head and loss
  option), several times faster than autograd for small networks and batches.
* ``torch``: autograd through the graph the rollout kept (:mod:`.rollout`).

Both return the loss parts (policy loss, value loss, entropy) as floats when asked.
"""

from __future__ import annotations

import numpy as np

from .losses import a2c_loss


def a2c_gradient(buf, graph, adv: np.ndarray, ret: np.ndarray, vf_coef: float, ent_coef: float,
                 normalize_advantage: bool, out: np.ndarray, parts: dict | None = None) -> np.ndarray:
    """The gradient of the A2C loss of rollout ``buf`` into ``out`` (not clipped).

    ``graph`` is what :func:`.rollout.collect` kept (None: the numpy backend).
    """
    m = buf.model
    if graph is None:
        return m.mlp_loss_grad(buf.flat("obs"), buf.flat("actions"), adv, ret, vf_coef, ent_coef,
                               normalize_advantage, out, parts)
    import torch

    if graph.heads:  # an MLP with backend="torch"
        head, values = torch.cat(graph.heads), torch.cat(graph.values)
    else:
        head, values = m.head_outputs(m.attach_dense(torch.cat(graph.features), torch.cat(graph.dense)))
    logp, ent = m.log_prob_entropy(head, torch.from_numpy(buf.flat("actions")))
    loss, lp = a2c_loss(logp, ent, values, torch.from_numpy(adv.reshape(-1)), torch.from_numpy(ret.reshape(-1)),
                        vf_coef, ent_coef, normalize_advantage)
    if parts is not None:
        parts.update({k: float(v.detach()) for k, v in lp.items()})
    return m.loss_grad(loss, out)
