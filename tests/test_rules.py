"""Update rules against their plain-numpy definitions."""

import numpy as np
import pytest

from dpsgd.rules import RuleConfig, UpdateRule, all_finite, reference_dc_update, reference_ssgd_update


def rand(n, seed):
    return np.random.default_rng(seed).normal(size=n).astype(np.float32)


@pytest.mark.parametrize("name", ["asgd", "sgd"])
def test_plain_rules_are_sgd(name):
    w, g = rand(1000, 0), rand(1000, 1)
    rule = UpdateRule(RuleConfig(name), w.size, 1)
    expect = w.astype(np.float64) - 0.1 * g
    rule.apply(w, g, 0, 0.1)
    np.testing.assert_allclose(w, expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["dc-asgd-c", "dc-asgd-a", "dc-asgd-i"])
def test_lambda_zero_is_sgd(name):
    w, g = rand(500, 0), rand(500, 1)
    rule = UpdateRule(RuleConfig(name, lam=0.0), w.size, 2)
    rule.reset_worker(0, rand(500, 5))  # a different backup must not matter with lam = 0
    expect = w.astype(np.float64) - 0.05 * g
    rule.apply(w, g, 0, 0.05)
    np.testing.assert_allclose(w, expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["dc-asgd-c", "dc-asgd-a", "dc-asgd-i"])
def test_w_equal_backup_is_sgd(name):
    w, g = rand(500, 0), rand(500, 1)
    rule = UpdateRule(RuleConfig(name, lam=3.0), w.size, 1)
    rule.reset_worker(0, w)
    expect = w.astype(np.float64) - 0.05 * g
    rule.apply(w, g, 0, 0.05)
    np.testing.assert_allclose(w, expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,lam", [("dc-asgd-c", 0.5), ("dc-asgd-a", 2.0), ("dc-asgd-i", 0.7)])
def test_dc_matches_reference_over_many_pushes(name, lam):
    n, workers, lr = 300, 3, 0.05
    rng = np.random.default_rng(0)
    w = rand(n, 0)
    rule = UpdateRule(RuleConfig(name, lam=lam), n, workers)
    ref_w = w.astype(np.float64)
    ref_bak = np.tile(ref_w, (workers, 1))
    ref_ms = np.zeros((workers, n))
    for m in range(workers):
        rule.reset_worker(m, w)
    for step in range(40):
        m = int(rng.integers(workers))
        g = rng.normal(size=n).astype(np.float32)
        rule.apply(w, g, m, lr)
        if name == "dc-asgd-a":
            ref_w, ref_ms[m] = reference_dc_update(ref_w, g, ref_bak[m], lr, lam, mean_square=ref_ms[m])
        else:
            ref_w, _ = reference_dc_update(ref_w, g, ref_bak[m], lr, lam, isotropic=name == "dc-asgd-i")
        ref_bak[m] = ref_w
    np.testing.assert_allclose(w, ref_w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rule.w_bak, ref_bak, rtol=1e-4, atol=1e-4)
    if name == "dc-asgd-a":
        np.testing.assert_allclose(rule.mean_square, ref_ms, rtol=1e-4, atol=1e-6)


def test_isotropic_rule_is_a_fixed_point_step_from_the_current_model():
    """dc-asgd-i, lam 1, on g = w_pulled - target: w <- (1 - lr) w_now + lr target, whatever the staleness."""
    n, lr = 400, 0.3
    w_pulled, target, drift = rand(n, 0), rand(n, 1), rand(n, 2)
    rule = UpdateRule(RuleConfig("dc-asgd-i"), n, 2)
    rule.reset_worker(0, w_pulled)
    w = (w_pulled + drift).astype(np.float32)  # other workers moved the model since the pull
    expect = (1 - lr) * w.astype(np.float64) + lr * target
    rule.apply(w, (w_pulled - target).astype(np.float32), 0, lr)
    np.testing.assert_allclose(w, expect, rtol=1e-5, atol=1e-5)
    # with momentum the compensated gradient is the one accumulated
    w2 = (w_pulled + drift).astype(np.float32)
    mom = UpdateRule(RuleConfig("dc-asgd-i", momentum=0.5), n, 2)
    mom.reset_worker(0, w_pulled)
    mom.apply(w2, (w_pulled - target).astype(np.float32), 0, lr)
    np.testing.assert_allclose(w2, expect, rtol=1e-5, atol=1e-5)  # first step: v = g_dc


def test_per_worker_state_is_isolated():
    n = 50
    w = rand(n, 0)
    rule = UpdateRule(RuleConfig("dc-asgd-a"), n, 3)
    for m in range(3):
        rule.reset_worker(m, w)
    before_bak, before_ms = rule.w_bak.copy(), rule.mean_square.copy()
    rule.apply(w, rand(n, 1), 1, 0.1)
    np.testing.assert_array_equal(rule.w_bak[[0, 2]], before_bak[[0, 2]])
    np.testing.assert_array_equal(rule.mean_square[[0, 2]], before_ms[[0, 2]])
    assert not np.array_equal(rule.mean_square[1], before_ms[1])
    np.testing.assert_array_equal(rule.w_bak[1], w)  # the worker pulls the new model


def test_ssgd_averages_the_round():
    n = 200
    w = rand(n, 0)
    grads = [rand(n, s) for s in (1, 2, 3)]
    rule = UpdateRule(RuleConfig("ssgd"), n, 3)
    expect = reference_ssgd_update(w, grads, 0.1)
    for g in grads:
        rule.add_to_round(g)
    rule.apply_round(w, 0.1)
    np.testing.assert_allclose(w, expect, rtol=1e-5, atol=1e-6)
    assert rule.sync_count == 0 and not rule.sync_acc.any()


def test_momentum():
    n = 100
    w, g1, g2 = rand(n, 0), rand(n, 1), rand(n, 2)
    rule = UpdateRule(RuleConfig("asgd", momentum=0.9), n, 1)
    ref = w.astype(np.float64)
    v = g1.astype(np.float64)
    ref = ref - 0.1 * v
    v = 0.9 * v + g2
    ref = ref - 0.1 * v
    rule.apply(w, g1, 0, 0.1)
    rule.apply(w, g2, 0, 0.1)
    np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-6)


def test_all_finite():
    x = np.ones(10, np.float32)
    assert all_finite(x)
    x[3] = np.nan
    assert not all_finite(x)
    x[3] = np.inf
    assert not all_finite(x)


@pytest.mark.parametrize("cfg,msg", [
    (RuleConfig("adam"), "unknown rule"),
    (RuleConfig("dc-asgd-c", lam=-1.0), "lambda"),
    (RuleConfig("dc-asgd-a", ms_decay=1.5), "ms_decay"),
    (RuleConfig("asgd", momentum=1.0), "momentum"),
])
def test_invalid_rule_config(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        cfg.validate()


def test_sequential_sgd_needs_one_worker():
    with pytest.raises(ValueError, match="exactly one worker"):
        RuleConfig("sgd").validate(n_workers=2)
