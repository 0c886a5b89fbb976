"""Lock-free kernels applied by a rank's threads to the rank's one flat float32 buffer.

Every kernel is compiled with ``nogil=True``: the threads of a rank run them at the same
time and write to the shared buffer without locks (Hogwild, Niu et al. 2011). None of them
uses ``parallel=True``, so no Numba threading layer is involved and the ``workqueue``
layer's abort when two Python threads enter parallel code cannot happen.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, fastmath=True, cache=True, error_model="numpy")
def sgd_step(w, g, lr):
    """w -= lr * g"""
    for i in range(w.shape[0]):
        w[i] -= lr * g[i]


@njit(nogil=True, fastmath=True, cache=True, error_model="numpy")
def rmsprop_step(w, g, sq, lr, alpha, eps):
    """RMSprop with the square statistics ``sq`` shared by all threads (A3C's shared RMSprop)."""
    one_m = 1.0 - alpha
    for i in range(w.shape[0]):
        gi = g[i]
        s = alpha * sq[i] + one_m * gi * gi
        sq[i] = s
        w[i] -= lr * gi / (np.sqrt(s) + eps)


@njit(nogil=True, fastmath=True, cache=True, error_model="numpy")
def rmsprop_tf_step(w, g, sq, lr, alpha, eps):
    """TensorFlow's RMSprop (the original A2C's, Stable-Baselines3's ``RMSpropTFLike``): ``eps``
    inside the square root, ``sq`` starting at ones (see :class:`LocalOptimizer`).

    With ``sq`` starting at zero and ``eps`` outside (torch's RMSprop), the first steps are
    ``lr * g / |g| * sqrt(1 / (1 - alpha))`` - ten times ``lr`` in every parameter at alpha 0.99,
    whatever the gradient's size; the A2C Atari settings (lr 7e-4, eps 1e-5) were tuned for this one.
    """
    one_m = 1.0 - alpha
    for i in range(w.shape[0]):
        gi = g[i]
        s = alpha * sq[i] + one_m * gi * gi
        sq[i] = s
        w[i] -= lr * gi / np.sqrt(s + eps)


@njit(nogil=True, fastmath=True, cache=True, error_model="numpy")
def adam_step(w, g, m, v, lr, b1, b2, eps, t):
    """Adam with shared moments; ``t`` (>= 1) is the rank's update count for bias correction."""
    c1 = 1.0 - b1 ** t
    c2 = 1.0 - b2 ** t
    for i in range(w.shape[0]):
        gi = g[i]
        mi = b1 * m[i] + (1.0 - b1) * gi
        vi = b2 * v[i] + (1.0 - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        w[i] -= lr * (mi / c1) / (np.sqrt(vi / c2) + eps)


@njit(nogil=True, fastmath=True, cache=True, error_model="numpy")
def snapshot_delta(out, w_start, w, snap, inv_lr):
    """snap = w (a copy taken now); out = (w_start - snap) * inv_lr: the pushed pseudo-gradient."""
    for i in range(w.shape[0]):
        s = w[i]
        snap[i] = s
        out[i] = (w_start[i] - s) * inv_lr


@njit(nogil=True, cache=True, error_model="numpy")  # no fast-math: it may reassociate the exact form below
def merge_pull(w, w_start, w_new, snap):
    """After a pull: keep the updates made since the snapshot, on top of the new model.

    w = w_new + (w - snap); w_start = w_new. Threads may be writing to ``w`` meanwhile (Hogwild).
    Written so that an entry nobody changed since the snapshot becomes exactly ``w_new``
    (``w += w_new - snap`` can be one rounding off): the next push is then exactly zero there,
    which is what lets sparse pushes stay sparse.
    """
    for i in range(w.shape[0]):
        wn = w_new[i]
        w[i] = wn + (w[i] - snap[i])
        w_start[i] = wn


def sgd_update(w: np.ndarray, g, lr) -> None:
    """``w -= lr * g`` for a dense update or a ``transport.SparseBlocks`` one (its blocks only, with
    the server's kernel for them): the local step of a pipelined worker with plain SGD, and the
    simulator's of it (bit for bit)."""
    from .rules import _plain_blocks_kernel
    from .transport import SparseBlocks

    if isinstance(g, SparseBlocks):
        _plain_blocks_kernel(w, g.payload, g.nb, g.block, np.float32(lr))
    else:
        sgd_step(w, g, np.float32(lr))


class LocalOptimizer:
    """The rule each thread applies to the rank's buffer: sgd, or rmsprop/rmsprop_tf/adam with
    shared state (``rmsprop_tf``: TensorFlow's variant, square statistics starting at ones)."""

    def __init__(self, name: str, n_params: int, alpha=0.99, betas=(0.9, 0.999), eps=1e-5, sq=None):
        """``sq``: an existing square-statistics buffer to update in place (e.g. one in shared
        memory, A3C's processes); None allocates one with the optimizer's initial values."""
        self.name = name
        self.alpha = np.float32(alpha)
        self.b1, self.b2 = np.float32(betas[0]), np.float32(betas[1])
        self.eps = np.float32(eps)
        if sq is not None:
            self.sq = sq
        else:
            self.sq = np.zeros(n_params if name in ("rmsprop", "rmsprop_tf", "adam") else 0, np.float32)
            if name == "rmsprop_tf":
                self.sq[:] = 1.0
        self.m = np.zeros(n_params if name == "adam" else 0, np.float32)

    def state_arrays(self, prefix: str = "local_opt_") -> dict[str, np.ndarray]:
        """The statistics to checkpoint (empty for sgd), named after the optimizer (so a run
        resumed with another optimizer does not take this one's statistics)."""
        out = {}
        if self.sq.size:
            out[f"{prefix}{self.name}_sq"] = self.sq
        if self.m.size:
            out[f"{prefix}{self.name}_m"] = self.m
        return out

    def load_state_arrays(self, arrays: dict, prefix: str = "local_opt_") -> bool:
        """Restore statistics saved by :meth:`state_arrays`; False (and nothing changed) when
        ``arrays`` holds none for this optimizer or holds another optimizer's."""
        want = self.state_arrays(prefix)
        if not want or any(k not in arrays or arrays[k].shape != v.shape for k, v in want.items()):
            return False
        for k, v in want.items():
            v[...] = arrays[k]
        return True

    def step(self, w: np.ndarray, g: np.ndarray, lr: float, t: int) -> None:
        lr = np.float32(lr)
        if self.name == "sgd":
            sgd_step(w, g, lr)
        elif self.name == "rmsprop":
            rmsprop_step(w, g, self.sq, lr, self.alpha, self.eps)
        elif self.name == "rmsprop_tf":
            rmsprop_tf_step(w, g, self.sq, lr, self.alpha, self.eps)
        else:
            adam_step(w, g, self.m, self.sq, lr, self.b1, self.b2, self.eps, np.float32(max(t, 1)))
