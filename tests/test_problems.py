"""Example problems: gradients against finite differences, the plug-in contract, data split."""

import numpy as np
import pytest

from dpsgd.plugin import ThreadContext
from dpsgd.problems import MLP, LeastSquares, SoftmaxRegression, load_digits_split, make_problem


def _tiny_data(rng, n=7, d=5, k=3):
    X = rng.standard_normal((n, d))
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)  # every class present
    return X, y


def _finite_difference(f, p, eps=1e-6):
    g = np.zeros_like(p)
    for i in range(p.size):
        e = np.zeros_like(p)
        e[i] = eps
        g[i] = (f(p + e) - f(p - e)) / (2 * eps)
    return g


def _problems(X, y):
    return [
        SoftmaxRegression(X, y),
        SoftmaxRegression(X, y, weight_decay=0.3),
        MLP(X, y, hidden=4, activation="tanh"),
        MLP(X, y, hidden=4, activation="tanh", weight_decay=0.2),
        MLP(X, y, hidden=4, activation="relu", weight_decay=0.1),
    ]


@pytest.mark.parametrize("which", range(5))
def test_classifier_gradients_match_finite_differences(which):
    rng = np.random.default_rng(which)
    X, y = _tiny_data(rng)
    prob = _problems(X, y)[which]
    p = rng.standard_normal(prob.n_params) * 0.5  # float64: the code runs in the params' dtype
    loss, grad = prob.loss_and_grad(p, X, y)
    assert grad.dtype == np.float64 and grad.shape == p.shape
    num = _finite_difference(lambda q: prob.loss_and_grad(q, X, y)[0], p)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7)


def test_least_squares_gradient_and_solution():
    prob = LeastSquares(n_samples=20, n_features=3, noise=0.1, weight_decay=0.05, seed=1)
    p = np.random.default_rng(0).standard_normal(3)
    X, y = prob.X.astype(np.float64), prob.y.astype(np.float64)
    _, grad = prob.loss_and_grad(p, X, y)
    num = _finite_difference(lambda q: prob.loss_and_grad(q, X, y)[0], p)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8)
    # the exact minimiser has zero full gradient
    _, g_star = prob.loss_and_grad(prob.solution.astype(np.float64), X, y)
    assert np.abs(g_star).max() < 1e-5
    clean = LeastSquares(n_samples=50, n_features=4, seed=2)
    np.testing.assert_allclose(clean.solution, clean.w_true, atol=1e-5)


def test_unpack_returns_views_of_the_flat_vector():
    X, y = _tiny_data(np.random.default_rng(0))
    mlp = MLP(X, y, hidden=4)
    p = np.arange(mlp.n_params, dtype=np.float32)
    W1, b1, W2, b2 = mlp.unpack(p)
    assert W1.shape == (5, 4) and b1.shape == (4,) and W2.shape == (4, 3) and b2.shape == (3,)
    assert all(np.shares_memory(a, p) for a in (W1, b1, W2, b2))
    assert W1.size + b1.size + W2.size + b2.size == p.size
    sm = SoftmaxRegression(X, y)
    W, b = sm.unpack(p[: sm.n_params])
    assert W.shape == (5, 3) and b.shape == (3,)


@pytest.mark.parametrize("name", ["softmax", "mlp", "least-squares"])
def test_compute_update_contract(name):
    alg = make_problem(name, batch_size=8, seed=0)
    w0 = alg.init_params(np.random.default_rng(0))
    assert w0.dtype == np.float32 and w0.ndim == 1
    params = w0 + np.float32(0.01)
    before = params.copy()
    ctx = ThreadContext(worker=1, n_workers=2, thread=0, n_threads=2, seed=3)
    state = alg.make_thread_state(ctx)
    g = alg.compute_update(params, state, ctx)
    assert g.dtype == np.float32 and g.shape == params.shape and np.all(np.isfinite(g))
    assert not np.shares_memory(g, params)
    np.testing.assert_array_equal(params, before)  # the live buffer is only read
    # same random stream -> same minibatch -> same gradient
    ctx2 = ThreadContext(worker=1, n_workers=2, thread=0, n_threads=2, seed=3)
    np.testing.assert_array_equal(g, alg.compute_update(params, state, ctx2))


def test_thread_state_is_this_threads_shard():
    alg = make_problem("softmax")
    shards = [alg.make_thread_state(ThreadContext(worker=w, n_workers=2, thread=t, n_threads=2, seed=0))
              for w in range(2) for t in range(2)]
    allrows = np.concatenate(shards)
    np.testing.assert_array_equal(np.sort(allrows), np.arange(len(alg.y)))


def test_digits_split_is_deterministic_and_standardised():
    a, b = load_digits_split(0), load_digits_split(0)
    for x, z in zip(a, b):
        np.testing.assert_array_equal(x, z)
    assert a.X_train.dtype == np.float32 and len(a.y_train) + len(a.y_test) == 1797
    assert np.abs(a.X_train.mean(axis=0)).max() < 1e-4
    c = load_digits_split(1)
    assert not np.array_equal(a.y_test, c.y_test)
    v = a.validation(0.2, seed=0)
    assert len(v.y_train) + len(v.y_test) == len(a.y_train)
    assert set(map(tuple, v.X_test)) <= set(map(tuple, a.X_train))


def test_evaluate_keys_and_chance_level_at_start():
    alg = make_problem("softmax")
    m = alg.evaluate(alg.init_params(np.random.default_rng(0)))
    assert {"test_error", "train_loss"} <= set(m)
    assert m["train_loss"] == pytest.approx(np.log(10), rel=1e-5)  # zero weights: uniform prediction
    assert 0.8 < m["test_error"] <= 0.95


def test_bad_arguments():
    X, y = _tiny_data(np.random.default_rng(0))
    with pytest.raises(ValueError):
        MLP(X, y, activation="sigmoid")
    with pytest.raises(ValueError):
        SoftmaxRegression(X, y, batch_size=0)
    with pytest.raises(ValueError):
        make_problem("cifar")
