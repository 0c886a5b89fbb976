"""Example problems for the framework, the simulator and the benchmarks.

* :class:`SoftmaxRegression` – multinomial logistic regression.
* :class:`MLP`               – one hidden layer (relu or tanh), softmax output.
* :class:`LeastSquares`      – synthetic linear regression with a known solution (tests).

The two classifiers train on scikit-learn's bundled ``digits`` data (1797 8x8 images, ten
classes; no download), split by :func:`load_digits_split`. Everything is plain numpy in
float32 with the parameters in one flat vector; ``unpack`` returns reshaped *views* of it.

``compute_update`` receives the worker's live Hogwild buffer: it copies the parameters first
and never keeps a reference to them, then returns the minibatch gradient as a new float32
array. The gradients are checked against finite differences in ``tests/test_problems.py``
(the same code runs in float64 when given float64 parameters).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .plugin import Algorithm, ThreadContext

__all__ = ["DigitsSplit", "load_digits_split", "SoftmaxRegression", "MLP", "LeastSquares", "make_problem"]


# --------------------------------------------------------------------------- data


class DigitsSplit(NamedTuple):
    """A train/test split (features standardised with the statistics of ``X_train``)."""

    X_train: np.ndarray  # float32 (n_train, 64)
    y_train: np.ndarray  # int64 (n_train,)
    X_test: np.ndarray
    y_test: np.ndarray

    def validation(self, fraction: float = 0.2, seed: int = 0) -> "DigitsSplit":
        """Carve a validation set out of the training rows (stratified, deterministic).

        Returns a split whose ``X_train`` is the rest of the training rows and whose
        ``X_test``/``y_test`` are the validation rows; the test rows are not touched.
        """
        from sklearn.model_selection import train_test_split

        tr, va = train_test_split(np.arange(len(self.y_train)), test_size=fraction,
                                  random_state=seed, stratify=self.y_train)
        return DigitsSplit(self.X_train[tr], self.y_train[tr], self.X_train[va], self.y_train[va])


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> DigitsSplit:
    """scikit-learn's digits, split into train/test (stratified, deterministic for ``seed``).

    Features are standardised with the training rows' mean and standard deviation
    (constant pixels get standard deviation 1).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_fraction, random_state=seed, stratify=y)
    mean = X_tr.mean(axis=0)
    std = X_tr.std(axis=0)
    std[std == 0] = 1.0
    def prep(a):
        return ((a - mean) / std).astype(np.float32)

    return DigitsSplit(prep(X_tr), y_tr.astype(np.int64), prep(X_te), y_te.astype(np.int64))


# --------------------------------------------------------------------------- helpers


def _softmax_xent(logits: np.ndarray, y: np.ndarray):
    """Mean cross-entropy of ``logits`` for labels ``y`` and its gradient w.r.t. the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    ez = np.exp(z)
    p = ez / ez.sum(axis=1, keepdims=True)
    n = len(y)
    rows = np.arange(n)
    loss = -np.mean(np.log(np.maximum(p[rows, y], np.finfo(p.dtype).tiny)))
    dlogits = p
    dlogits[rows, y] -= 1.0
    dlogits /= n
    return float(loss), dlogits


class _Classifier(Algorithm):
    """Shared plumbing of the digits classifiers: data, sampling, evaluation."""

    def __init__(self, X_train, y_train, X_test=None, y_test=None, *, batch_size: int = 16,
                 weight_decay: float = 0.0, n_classes: int | None = None):
        self.X = np.ascontiguousarray(X_train, np.float32)
        self.y = np.asarray(y_train, np.int64)
        self.X_test = None if X_test is None else np.ascontiguousarray(X_test, np.float32)
        self.y_test = None if y_test is None else np.asarray(y_test, np.int64)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.batch_size = int(batch_size)
        self.weight_decay = float(weight_decay)
        self.n_features = self.X.shape[1]
        self.n_classes = int(n_classes or int(self.y.max()) + 1)
        self.samples_per_update = self.batch_size

    @classmethod
    def from_digits(cls, seed: int = 0, test_fraction: float = 0.25, **kwargs):
        """The problem on :func:`load_digits_split` (``seed`` picks the split)."""
        s = load_digits_split(seed, test_fraction)
        return cls(s.X_train, s.y_train, s.X_test, s.y_test, **kwargs)

    @classmethod
    def from_split(cls, split: DigitsSplit, **kwargs):
        return cls(split.X_train, split.y_train, split.X_test, split.y_test, **kwargs)

    # the plug-in interface -------------------------------------------------
    def make_thread_state(self, ctx: ThreadContext) -> np.ndarray:
        """This thread's shard of the training rows."""
        rows = ctx.shard(len(self.y))
        if rows.size == 0:
            raise ValueError(f"{len(self.y)} training rows cannot be shared by {ctx.n_global_threads} threads")
        return rows

    def compute_update(self, params: np.ndarray, rows: np.ndarray, ctx: ThreadContext) -> np.ndarray:
        w = np.array(params, dtype=np.float32, copy=True)  # params is the live Hogwild buffer
        idx = ctx.rng.choice(rows, self.batch_size)
        _, grad = self.loss_and_grad(w, self.X[idx], self.y[idx])
        return grad.astype(np.float32, copy=False)

    def evaluate(self, params: np.ndarray) -> dict:
        w = np.array(params, dtype=np.float32, copy=True)
        logits = self.predict_logits(w, self.X)
        out = {"train_loss": _softmax_xent(logits, self.y)[0],
               "train_error": float(np.mean(logits.argmax(axis=1) != self.y))}
        if self.X_test is not None:
            pred = self.predict_logits(w, self.X_test).argmax(axis=1)
            out["test_error"] = float(np.mean(pred != self.y_test))
        return out

    # to be provided --------------------------------------------------------
    def predict_logits(self, params, X):
        raise NotImplementedError

    def loss_and_grad(self, params, X, y):
        """Minibatch loss (mean cross-entropy + 0.5 * weight_decay * |weights|^2) and gradient.

        Works in the dtype of ``params`` (float64 for the finite-difference tests).
        """
        raise NotImplementedError

    def predict(self, params, X):
        return self.predict_logits(np.asarray(params, np.float32), np.asarray(X, np.float32)).argmax(axis=1)


# --------------------------------------------------------------------------- softmax regression


class SoftmaxRegression(_Classifier):
    """Multinomial logistic regression: logits = X @ W + b.

    Layout of the flat parameters: ``W`` (n_features x n_classes, row-major), then ``b``.
    Weight decay applies to ``W`` only.
    """

    @property
    def n_params(self) -> int:
        return (self.n_features + 1) * self.n_classes

    def unpack(self, params):
        d, k = self.n_features, self.n_classes
        return params[: d * k].reshape(d, k), params[d * k:]

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(self.n_params, np.float32)

    def predict_logits(self, params, X):
        W, b = self.unpack(params)
        return X.astype(params.dtype, copy=False) @ W + b

    def loss_and_grad(self, params, X, y):
        W, b = self.unpack(params)
        X = X.astype(params.dtype, copy=False)
        loss, dlogits = _softmax_xent(X @ W + b, y)
        grad = np.empty_like(params)
        gW, gb = self.unpack(grad)
        gW[...] = X.T @ dlogits
        gb[...] = dlogits.sum(axis=0)
        if self.weight_decay:
            loss += 0.5 * self.weight_decay * float(np.sum(W * W))
            gW += self.weight_decay * W
        return loss, grad


# --------------------------------------------------------------------------- MLP


class MLP(_Classifier):
    """One hidden layer: logits = act(X @ W1 + b1) @ W2 + b2, act = relu or tanh.

    Layout of the flat parameters: ``W1`` (n_features x hidden), ``b1``, ``W2`` (hidden x
    n_classes), ``b2``. Weight decay applies to ``W1`` and ``W2``.
    """

    def __init__(self, X_train, y_train, X_test=None, y_test=None, *, hidden: int = 64,
                 activation: str = "relu", **kwargs):
        super().__init__(X_train, y_train, X_test, y_test, **kwargs)
        if activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', got {activation!r}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.hidden = int(hidden)
        self.activation = activation

    @property
    def n_params(self) -> int:
        d, h, k = self.n_features, self.hidden, self.n_classes
        return d * h + h + h * k + k

    def unpack(self, params):
        d, h, k = self.n_features, self.hidden, self.n_classes
        i = 0
        W1 = params[i: i + d * h].reshape(d, h); i += d * h
        b1 = params[i: i + h]; i += h
        W2 = params[i: i + h * k].reshape(h, k); i += h * k
        b2 = params[i: i + k]
        return W1, b1, W2, b2

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        """Glorot-uniform weights, zero biases."""
        p = np.zeros(self.n_params, np.float32)
        W1, _, W2, _ = self.unpack(p)
        for W in (W1, W2):
            limit = np.sqrt(6.0 / (W.shape[0] + W.shape[1]))
            W[...] = rng.uniform(-limit, limit, W.shape)
        return p

    def _hidden(self, params, X):
        W1, b1, _, _ = self.unpack(params)
        pre = X @ W1 + b1
        return pre, (np.maximum(pre, 0) if self.activation == "relu" else np.tanh(pre))

    def predict_logits(self, params, X):
        _, _, W2, b2 = self.unpack(params)
        _, h = self._hidden(params, X.astype(params.dtype, copy=False))
        return h @ W2 + b2

    def loss_and_grad(self, params, X, y):
        W1, b1, W2, b2 = self.unpack(params)
        X = X.astype(params.dtype, copy=False)
        pre, h = self._hidden(params, X)
        loss, dlogits = _softmax_xent(h @ W2 + b2, y)
        grad = np.empty_like(params)
        gW1, gb1, gW2, gb2 = self.unpack(grad)
        gW2[...] = h.T @ dlogits
        gb2[...] = dlogits.sum(axis=0)
        dh = dlogits @ W2.T
        dpre = dh * (pre > 0) if self.activation == "relu" else dh * (1.0 - h * h)
        gW1[...] = X.T @ dpre
        gb1[...] = dpre.sum(axis=0)
        if self.weight_decay:
            loss += 0.5 * self.weight_decay * float(np.sum(W1 * W1) + np.sum(W2 * W2))
            gW1 += self.weight_decay * W1
            gW2 += self.weight_decay * W2
        return loss, grad


# --------------------------------------------------------------------------- least squares


#: the seed of LeastSquares' data stream beside the run's seed (the data never shares the run's stream)
DATA_STREAM = 7919


class LeastSquares(Algorithm):
    """Synthetic least squares ``min_w 0.5 * mean((X w - y)^2) + 0.5 * weight_decay * |w|^2``.

    ``X`` ~ N(0, 1), ``y = X @ w_true + noise * N(0, 1)``. ``solution`` is the exact
    minimiser (equal to ``w_true`` when ``noise == 0`` and ``weight_decay == 0``).
    """

    def __init__(self, n_samples: int = 512, n_features: int = 8, *, noise: float = 0.0,
                 batch_size: int = 16, weight_decay: float = 0.0, seed: int = 0):
        rng = np.random.default_rng([seed, DATA_STREAM])
        self.X = rng.standard_normal((n_samples, n_features)).astype(np.float32)
        self.w_true = rng.standard_normal(n_features).astype(np.float32)
        self.y = (self.X @ self.w_true + noise * rng.standard_normal(n_samples)).astype(np.float32)
        self.batch_size = int(batch_size)
        self.weight_decay = float(weight_decay)
        self.samples_per_update = self.batch_size
        X64, y64 = self.X.astype(np.float64), self.y.astype(np.float64)
        A = X64.T @ X64 / n_samples + self.weight_decay * np.eye(n_features)
        self.solution = np.linalg.solve(A, X64.T @ y64 / n_samples).astype(np.float32)

    @property
    def n_params(self) -> int:
        return self.X.shape[1]

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(self.n_params, np.float32)

    def make_thread_state(self, ctx: ThreadContext) -> np.ndarray:
        return ctx.shard(len(self.y))

    def loss_and_grad(self, params, X, y):
        X = X.astype(params.dtype, copy=False)
        r = X @ params - y
        loss = 0.5 * float(np.mean(r * r)) + 0.5 * self.weight_decay * float(params @ params)
        grad = X.T @ r / len(y) + self.weight_decay * params
        return loss, grad

    def compute_update(self, params: np.ndarray, rows: np.ndarray, ctx: ThreadContext) -> np.ndarray:
        w = np.array(params, dtype=np.float32, copy=True)
        idx = ctx.rng.choice(rows, self.batch_size)
        return self.loss_and_grad(w, self.X[idx], self.y[idx])[1].astype(np.float32, copy=False)

    def evaluate(self, params: np.ndarray) -> dict:
        w = np.asarray(params, np.float64)
        loss, _ = self.loss_and_grad(w, self.X.astype(np.float64), self.y.astype(np.float64))
        return {"loss": loss, "dist_to_solution": float(np.linalg.norm(w - self.solution))}


# --------------------------------------------------------------------------- registry


def make_problem(name: str, *, batch_size: int = 16, seed: int = 0, **kwargs) -> Algorithm:
    """``softmax`` | ``mlp`` (digits, split by ``seed``) | ``least-squares`` (synthetic)."""
    key = name.lower().replace("_", "-")
    if key in ("softmax", "softmax-regression", "logreg"):
        return SoftmaxRegression.from_digits(seed, batch_size=batch_size, **kwargs)
    if key == "mlp":
        return MLP.from_digits(seed, batch_size=batch_size, **kwargs)
    if key in ("least-squares", "lsq", "leastsquares"):
        return LeastSquares(batch_size=batch_size, seed=seed, **kwargs)
    raise ValueError(f"unknown problem {name!r}; choose softmax, mlp or least-squares")
