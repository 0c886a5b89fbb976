"""The asynchrony simulator: determinism, staleness model, replay, equivalences, convergence."""

import json

import numpy as np
import pytest

from dpsgd.plugin import ThreadContext
from dpsgd.problems import LeastSquares, SoftmaxRegression, load_digits_split
from dpsgd.rules import RuleConfig, reference_dc_update, reference_ssgd_update
from dpsgd.simulate import ReplayLog, load_staleness_log, simulate


@pytest.fixture(scope="module")
def lsq():
    return LeastSquares(n_samples=128, n_features=6, noise=0.1, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def digits():
    return SoftmaxRegression.from_split(load_digits_split(0), batch_size=16)


def _ctx(m, n, seed):  # the random stream the simulator gives worker m
    return ThreadContext(worker=m, n_workers=n, thread=0, n_threads=1, seed=seed,
                         rng=np.random.default_rng([seed, m, 0, 0]))


@pytest.mark.parametrize("rule", ["asgd", "dc-asgd-c", "dc-asgd-a", "ssgd"])
@pytest.mark.parametrize("delay", ["uniform", "geometric"])
def test_deterministic_for_a_seed(lsq, rule, delay):
    kw = dict(lr=0.05, total_updates=240, delay=delay, eval_every=60)
    a = simulate(lsq, RuleConfig(rule, lam=0.5), 4, seed=3, **kw)
    b = simulate(lsq, RuleConfig(rule, lam=0.5), 4, seed=3, **kw)
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(a.staleness, b.staleness)
    np.testing.assert_array_equal(a.push_workers, b.push_workers)
    assert a.history == b.history and [u for u, _ in a.history] == [0, 60, 120, 180, 240]
    c = simulate(lsq, RuleConfig(rule, lam=0.5), 4, seed=4, **kw)
    assert not np.array_equal(a.params, c.params)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_constant_delay_is_round_robin_with_staleness_n_minus_1(lsq, n):
    r = simulate(lsq, "asgd", n, lr=0.01, total_updates=10 * n, delay="constant")
    assert r.pushes == r.updates == 10 * n
    np.testing.assert_array_equal(r.push_workers, np.tile(np.arange(n), 10))
    np.testing.assert_array_equal(r.staleness[:n], np.arange(n))  # warm-up: worker m waits for m pushes
    assert np.all(r.staleness[n:] == n - 1)


def test_random_delays_have_mean_staleness_near_n_minus_1(lsq):
    for delay in ("uniform", "geometric", "exponential"):
        r = simulate(lsq, "asgd", 6, lr=0.01, total_updates=3000, delay=delay, seed=1)
        assert abs(r.staleness[100:].mean() - 5) < 0.3
        assert r.staleness.max() > 5  # not round robin any more


def test_slow_worker_pushes_less_and_staler(lsq):
    r = simulate(lsq, "asgd", 4, lr=0.01, total_updates=2000, delay="uniform", slowdown=[4, 1, 1, 1], seed=0)
    counts = np.bincount(r.push_workers, minlength=4)
    assert counts[0] < counts[1:].min() / 2
    assert r.staleness[r.push_workers == 0][1:].mean() > 8


@pytest.mark.parametrize("rule", ["asgd", "dc-asgd-a"])
def test_replay_reproduces_staleness_and_model(lsq, rule, tmp_path):
    orig = simulate(lsq, rule, 5, lr=0.05, total_updates=400, delay="geometric", delay_param=0.3, seed=2)
    again = simulate(lsq, rule, 5, lr=0.05, delay=orig.push_workers.tolist(), seed=2)
    np.testing.assert_array_equal(again.staleness, orig.staleness)
    np.testing.assert_array_equal(again.params, orig.params)
    # through the on-disk formats: metrics.json-style object, and CSV
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"rule": rule, **orig.to_log()}))
    log = load_staleness_log(path)
    np.testing.assert_array_equal(log.push_workers, orig.push_workers)
    csv = tmp_path / "push.csv"
    csv.write_text("worker\n" + "\n".join(map(str, orig.push_workers)) + "\n")
    np.testing.assert_array_equal(load_staleness_log(csv).push_workers, orig.push_workers)
    rep = simulate(lsq, rule, 5, lr=0.05, delay=log, seed=2)
    np.testing.assert_array_equal(rep.staleness, orig.staleness)


def test_replay_hand_made_sequence_and_late_join(lsq):
    r = simulate(lsq, "asgd", 3, lr=0.01, delay=[0, 0, 1, 2, 0, 1, 1])
    np.testing.assert_array_equal(r.staleness, [0, 0, 2, 3, 2, 2, 0])
    # worker 2 pulled for the first time after 2 pushes had been applied
    r = simulate(lsq, "asgd", 3, lr=0.01, delay=ReplayLog(np.array([0, 1, 2, 0]), np.array([0, 0, 2])))
    np.testing.assert_array_equal(r.staleness, [0, 1, 0, 2])
    with pytest.raises(ValueError, match="before its first pull"):
        simulate(lsq, "asgd", 3, lr=0.01, delay=ReplayLog(np.array([2, 0]), np.array([0, 0, 1])))
    with pytest.raises(ValueError, match="worker ids"):
        simulate(lsq, "asgd", 2, lr=0.01, delay=[0, 2])


@pytest.mark.parametrize("rule,schedule", [("sgd", "constant"), ("asgd", "linear"), ("asgd", "power")])
def test_one_worker_is_sequential_sgd(lsq, rule, schedule):
    lr, T = 0.05, 150
    r = simulate(lsq, rule, 1, lr=lr, total_updates=T, schedule=schedule, tau0=2.0, kappa=0.5, seed=7)
    w = lsq.init_params(np.random.default_rng(7))
    ctx, state = _ctx(0, 1, 7), lsq.make_thread_state(_ctx(0, 1, 7))
    for t in range(T):
        step = {"constant": lr, "linear": lr * (1 - t / T), "power": lr * (2.0 + t) ** -0.5}[schedule]
        w = w - np.float32(step) * lsq.compute_update(w, state, ctx)
    np.testing.assert_allclose(r.params, w, rtol=1e-6, atol=1e-7)
    assert np.all(r.staleness == 0)


@pytest.mark.parametrize("name", ["dc-asgd-c", "dc-asgd-a", "dc-asgd-i"])
def test_dc_asgd_with_lambda_zero_is_asgd(digits, name):
    kw = dict(lr=0.1, total_updates=300, delay="uniform", seed=5)
    a = simulate(digits, "asgd", 4, **kw)
    d = simulate(digits, RuleConfig(name, lam=0.0), 4, **kw)
    np.testing.assert_allclose(d.params, a.params, rtol=1e-6, atol=1e-7)
    d2 = simulate(digits, RuleConfig(name, lam=5.0), 4, **kw)
    assert not d2.diverged
    assert np.abs(d2.params - a.params).max() > 1e-4  # and lambda does something


@pytest.mark.parametrize("name", ["dc-asgd-c", "dc-asgd-a", "dc-asgd-i"])
def test_dc_asgd_by_hand_two_workers_round_robin(lsq, name):
    n, lr, lam, T = 2, 0.05, 3.0, 12
    r = simulate(lsq, RuleConfig(name, lam=lam), n, lr=lr, total_updates=T, delay="constant", seed=1)
    w = lsq.init_params(np.random.default_rng(1)).astype(np.float64)
    bak = [w.copy() for _ in range(n)]
    ms = [np.zeros_like(w) if name == "dc-asgd-a" else None for _ in range(n)]
    ctxs = [_ctx(m, n, 1) for m in range(n)]
    states = [lsq.make_thread_state(c) for c in ctxs]
    for t in range(T):
        m = t % n
        g = lsq.compute_update(bak[m].astype(np.float32), states[m], ctxs[m])
        w, ms[m] = reference_dc_update(w, g, bak[m], lr, lam, ms[m], 0.95, 1e-7, isotropic=name == "dc-asgd-i")
        bak[m] = w.copy()
    np.testing.assert_allclose(r.params, w, rtol=1e-4, atol=1e-5)


def test_ssgd_rounds_average_all_workers(lsq):
    n, lr = 3, 0.1
    r = simulate(lsq, "ssgd", n, lr=lr, total_updates=4 * n, seed=0)
    assert r.version == 4 and r.pushes == 4 * n and np.all(r.staleness == 0)
    w = lsq.init_params(np.random.default_rng(0)).astype(np.float64)
    ctxs = [_ctx(m, n, 0) for m in range(n)]
    states = [lsq.make_thread_state(c) for c in ctxs]
    for _ in range(4):
        grads = [lsq.compute_update(w.astype(np.float32), states[m], ctxs[m]) for m in range(n)]
        w = reference_ssgd_update(w, grads, lr)
    np.testing.assert_allclose(r.params, w, rtol=1e-5, atol=1e-6)


def test_local_steps_push_pseudo_gradients(lsq):
    # one worker: k local steps then a push of (w_pulled - w_local)/lr is plain SGD again
    a = simulate(lsq, "asgd", 1, lr=0.05, total_updates=60, local_steps=4, seed=0)
    b = simulate(lsq, "asgd", 1, lr=0.05, total_updates=60, seed=0)
    assert a.pushes == 15 and a.updates == 60
    np.testing.assert_allclose(a.params, b.params, rtol=1e-4, atol=1e-5)


def test_max_staleness_drops_pushes(lsq):
    r = simulate(lsq, "asgd", 4, lr=0.01, total_updates=400, delay="exponential", max_staleness=3, seed=0)
    assert r.dropped == int(np.sum(r.staleness > 3)) > 0
    assert r.version == r.pushes - r.dropped == r.updates


def test_divergence_stops_the_run(lsq):
    with np.errstate(all="ignore"):
        r = simulate(lsq, "asgd", 2, lr=1e4, total_updates=500, eval_every=100)
    assert r.diverged and r.updates < 500
    assert r.history[-1][0] == r.updates  # evaluated where it stopped


def test_least_squares_converges_with_delays(lsq):
    r = simulate(lsq, "dc-asgd-a", 8, lr=0.02, total_updates=4000, delay="uniform", seed=0)
    assert np.linalg.norm(r.params - lsq.solution) < 0.05


def test_softmax_digits_under_10_percent_with_4_workers(digits):
    r = simulate(digits, "dc-asgd-a", 4, lr=0.1, total_updates=2000, delay="uniform", eval_every=1000, seed=0)
    assert r.final["test_error"] < 0.10
    assert r.history[0][1]["test_error"] > 0.5  # it did learn


def test_same_as_framework_single_process(lsq):
    import dpsgd

    cfg = dpsgd.TrainConfig(rule=RuleConfig("asgd"), lr=0.05, total_updates=200, threads=1, progress=False, seed=4)
    real = dpsgd.train(lsq, cfg)
    sim = simulate(lsq, "asgd", 1, lr=0.05, total_updates=200, seed=4)
    # the one-thread worker pushes its gradient itself (no local step, snapshot or merge), as the
    # simulator does: the same float32 operations, the same model to the bit
    np.testing.assert_array_equal(sim.params, real.params)


@pytest.mark.parametrize("optimizer", ["rmsprop", "rmsprop_tf", "adam"])
def test_local_optimizer_steps_are_the_workers(lsq, optimizer):
    """The simulator's local steps use the worker's LocalOptimizer: one virtual worker with 3
    local RMSprop/Adam steps per push is the one-process framework run, to float32 rounding."""
    import dpsgd

    cfg = dpsgd.TrainConfig(rule=RuleConfig("asgd"), lr=0.01, total_updates=240, threads=1, progress=False, seed=2,
                            local_steps=3, local_optimizer=optimizer)
    real = dpsgd.train(lsq, cfg)
    sim = simulate(lsq, "asgd", 1, lr=0.01, total_updates=240, seed=2, local_steps=3, local_optimizer=optimizer)
    sgd = simulate(lsq, "asgd", 1, lr=0.01, total_updates=240, seed=2, local_steps=3)
    np.testing.assert_allclose(sim.params, real.params, rtol=1e-4, atol=1e-5)
    assert np.abs(sim.params - sgd.params).max() > 1e-3  # the optimizer really is another one
    with pytest.raises(ValueError, match="local optimizer"):
        simulate(lsq, "asgd", 1, lr=0.01, total_updates=10, local_optimizer="lion")


def test_final_evaluation_without_eval_every(digits):
    r = simulate(digits, "asgd", 2, lr=0.1, total_updates=50, seed=0)
    assert set(r.final) >= {"test_error"} and [u for u, _ in r.history] == [50]
    assert simulate(digits, "asgd", 2, lr=0.1, total_updates=50, seed=0, final_eval=False).final == {}


def test_argument_errors(lsq):
    with pytest.raises(ValueError):
        simulate(lsq, "sgd", 2, lr=0.1, total_updates=10)
    with pytest.raises(ValueError):
        simulate(lsq, "asgd", 2, lr=0.1, total_updates=10, delay="poisson")
    with pytest.raises(ValueError):
        simulate(lsq, "asgd", 2, lr=0.1, total_updates=10, schedule="cosine")
    with pytest.raises(ValueError):
        simulate(lsq, "asgd", 2, lr=0.1)  # no total_updates
    with pytest.raises(ValueError):
        simulate(lsq, "ssgd", 2, lr=0.1, delay=[0, 1])


def test_late_joiner_replay_matches_the_mpi_worker_by_hand(lsq):
    # worker 1 pushes first; worker 0 pulls for the first time at version 1 (random streams of a
    # fresh run are [seed, worker, thread, 0] whatever the join time)

    lr = 0.05
    r = simulate(lsq, "asgd", 2, lr=lr, delay=ReplayLog(np.array([1, 0]), np.array([1, 0])), seed=3)
    np.testing.assert_array_equal(r.staleness, [0, 0])
    w = lsq.init_params(np.random.default_rng(3))
    ctx1 = ThreadContext(worker=1, n_workers=2, thread=0, n_threads=1, seed=3, rng=np.random.default_rng([3, 1, 0, 0]))
    ctx0 = ThreadContext(worker=0, n_workers=2, thread=0, n_threads=1, seed=3, rng=np.random.default_rng([3, 0, 0, 0]))
    w = w - np.float32(lr) * lsq.compute_update(w, lsq.make_thread_state(ctx1), ctx1)
    w = w - np.float32(lr) * lsq.compute_update(w, lsq.make_thread_state(ctx0), ctx0)
    np.testing.assert_allclose(r.params, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", ["asgd", "dc-asgd-a"])
@pytest.mark.parametrize("opt", ["sgd", "rmsprop"])
def test_pipelined_one_process_run_is_the_simulated_one(lsq, rule, opt):
    """A one-thread worker with overlap (its exchange in a communication thread) is deterministic
    and simulate(overlap=True) reproduces it bit for bit; with one worker, pipelining changes
    nothing but rounding (the worker computes on what the server has)."""
    import dpsgd

    kw = dict(lr=0.05, total_updates=200)
    cfg = dpsgd.TrainConfig(rule=RuleConfig(rule), threads=1, overlap=True, progress=False, local_optimizer=opt, **kw)
    real = dpsgd.train(lsq, cfg)
    assert real.metrics["overlap"] and real.metrics["total_updates"] == 200
    assert len(real.metrics["exchange_wait_seconds_per_worker"]) == 1
    sim = simulate(lsq, rule, 1, overlap=True, local_optimizer=opt, **kw)
    np.testing.assert_array_equal(real.params, sim.params)
    plain = simulate(lsq, rule, 1, local_optimizer=opt, **kw)
    np.testing.assert_allclose(plain.params, sim.params, rtol=1e-5, atol=1e-6)
    # several threads already overlap: the option leaves them alone
    two = dpsgd.train(lsq, dpsgd.TrainConfig(rule=RuleConfig(rule), threads=2, overlap=True, progress=False, **kw))
    assert not two.metrics["overlap"]


def test_pipelined_workers_are_another_run_and_still_converge(lsq):
    kw = dict(lr=0.05, total_updates=600, delay="uniform", seed=1)
    ov = simulate(lsq, "asgd", 4, overlap=True, **kw)
    plain = simulate(lsq, "asgd", 4, **kw)
    assert np.abs(ov.params - plain.params).max() > 1e-4
    assert ov.final["dist_to_solution"] < 2 * plain.final["dist_to_solution"] + 0.05
    with pytest.raises(ValueError, match="overlap"):
        simulate(lsq, "ssgd", 2, lr=0.05, total_updates=10, overlap=True)


def test_local_rmsprop_with_one_local_step_is_simulated(lsq):
    """local_steps=1 with a local RMSprop: the worker pushes (w_start - w) / lr after its RMSprop
    step, and the simulator does the same (it used to push the raw gradient)."""
    import dpsgd

    kw = dict(lr=0.05, total_updates=100)
    real = dpsgd.train(lsq, dpsgd.TrainConfig(rule=RuleConfig("asgd"), threads=1, progress=False,
                                              local_optimizer="rmsprop", **kw))
    sim = simulate(lsq, "asgd", 1, local_optimizer="rmsprop", **kw)
    np.testing.assert_allclose(real.params, sim.params, rtol=1e-5, atol=1e-6)
    assert np.abs(sim.params - simulate(lsq, "asgd", 1, **kw).params).max() > 1e-3
