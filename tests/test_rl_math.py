"""HSA2C maths: returns/advantages against hand-computed cases, distributions, flat networks."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gymnasium")

from algorithms.hsa2c.losses import a2c_loss, clip_grad_norm_, compute_advantages, nstep_returns  # noqa: E402
from algorithms.hsa2c.nets import UnsupportedSpace, build_model, model_config  # noqa: E402

G = 0.9
R3 = np.ones((3, 1))
V3 = np.array([[0.5], [0.4], [0.3]])
F = np.zeros((3, 1), bool)
LAST = np.array([0.2])


def col(*x):
    return np.array(x, np.float64).reshape(-1, 1)


def test_nstep_returns_bootstrap_at_rollout_end():
    adv, ret = compute_advantages(R3, V3, F, F, np.zeros((3, 1)), LAST, G, 1.0)
    # R2 = 1 + .9*.2 = 1.18; R1 = 1 + .9*1.18 = 2.062; R0 = 1 + .9*2.062 = 2.8558
    np.testing.assert_allclose(ret, col(2.8558, 2.062, 1.18), rtol=1e-6)
    np.testing.assert_allclose(adv, col(2.8558 - .5, 2.062 - .4, 1.18 - .3), rtol=1e-6)


def test_termination_does_not_bootstrap():
    term = col(0, 1, 0).astype(bool)
    nv = col(0, 99.0, 0)  # ignored on a terminated step
    adv, ret = compute_advantages(R3, V3, term, F, nv, LAST, G, 1.0)
    # R1 = 1 (episode over); R0 = 1 + .9*1 = 1.9; R2 starts the next episode: 1 + .9*.2
    np.testing.assert_allclose(ret, col(1.9, 1.0, 1.18), rtol=1e-6)


def test_truncation_bootstraps_from_the_final_observation():
    trunc = col(0, 1, 0).astype(bool)
    nv = col(0, 2.0, 0)  # V(final observation of the cut episode)
    adv, ret = compute_advantages(R3, V3, F, trunc, nv, LAST, G, 1.0)
    # R1 = 1 + .9*2 = 2.8 (not V(s2) = .3 of the next episode); R0 = 1 + .9*2.8 = 3.52
    np.testing.assert_allclose(ret, col(3.52, 2.8, 1.18), rtol=1e-6)


def test_terminated_and_truncated_together_count_as_terminated():
    both = col(0, 1, 0).astype(bool)
    _, ret = compute_advantages(R3, V3, both, both, col(0, 2.0, 0), LAST, G, 1.0)
    np.testing.assert_allclose(ret, col(1.9, 1.0, 1.18), rtol=1e-6)


def test_truncation_on_the_last_step_uses_final_value_not_last_value():
    trunc = col(0, 0, 1).astype(bool)
    _, ret = compute_advantages(R3, V3, F, trunc, col(0, 0, 5.0), LAST, G, 1.0)
    # R2 = 1 + .9*5 = 5.5; R1 = 1 + .9*5.5 = 5.95; R0 = 1 + .9*5.95 = 6.355
    np.testing.assert_allclose(ret, col(6.355, 5.95, 5.5), rtol=1e-6)


def test_gae_hand_computed():
    adv, ret = compute_advantages(R3, V3, F, F, np.zeros((3, 1)), LAST, G, 0.5)
    # deltas: d2 = 1 + .9*.2 - .3 = .88; d1 = 1 + .9*.3 - .4 = .87; d0 = 1 + .9*.4 - .5 = .86
    # A2 = .88; A1 = .87 + .45*.88 = 1.266; A0 = .86 + .45*1.266 = 1.4297
    np.testing.assert_allclose(adv, col(1.4297, 1.266, 0.88), rtol=1e-6)
    np.testing.assert_allclose(ret, adv + V3, rtol=1e-6)


def test_gae_resets_across_episode_boundaries():
    term = col(0, 1, 0).astype(bool)
    adv, _ = compute_advantages(R3, V3, term, F, np.zeros((3, 1)), LAST, G, 0.5)
    # d1 = 1 - .4 = .6 (terminal); A1 = .6 (A2 not carried over); A0 = (1 + .9*.4 - .5) + .45*.6
    np.testing.assert_allclose(adv, col(0.86 + 0.45 * 0.6, 0.6, 0.88), rtol=1e-6)


def test_gae_lambda_zero_is_one_step_td():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    last = rng.normal(size=3)
    adv, _ = compute_advantages(r, v, np.zeros((6, 3), bool), np.zeros((6, 3), bool), np.zeros((6, 3)), last, G, 0.0)
    nxt = np.vstack([v[1:], last])
    np.testing.assert_allclose(adv, r + G * nxt - v, rtol=1e-5, atol=1e-6)


def test_lambda_one_matches_plain_nstep_returns_random_dones():
    rng = np.random.default_rng(1)
    T, N = 7, 5
    r, v, nv = rng.normal(size=(T, N)), rng.normal(size=(T, N)), rng.normal(size=(T, N))
    term, trunc = rng.random((T, N)) < 0.2, rng.random((T, N)) < 0.2
    last = rng.normal(size=N)
    _, ret = compute_advantages(r, v, term, trunc, nv, last, 0.97, 1.0)
    np.testing.assert_allclose(ret, nstep_returns(r, term, trunc, nv, last, 0.97), rtol=1e-5, atol=1e-5)


def test_a2c_loss_value_and_gradients():
    logp = torch.tensor([-0.5, -1.0], requires_grad=True)
    ent = torch.tensor([0.7, 0.3], requires_grad=True)
    values = torch.tensor([1.0, 2.0], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    ret = torch.tensor([3.0, 1.0])
    loss, parts = a2c_loss(logp, ent, values, adv, ret, vf_coef=0.5, ent_coef=0.1)
    # policy = -(2*-.5 + -1*-1)/2 = 0; value = ((3-1)^2 + (1-2)^2)/2 = 2.5; entropy = .5
    assert parts["policy_loss"].item() == pytest.approx(0.0)
    assert parts["value_loss"].item() == pytest.approx(2.5)
    assert loss.item() == pytest.approx(0.5 * 2.5 - 0.1 * 0.5)
    loss.backward()
    np.testing.assert_allclose(logp.grad.numpy(), [-1.0, 0.5])  # -A / B
    np.testing.assert_allclose(values.grad.numpy(), [0.5 * (1 - 3), 0.5 * (2 - 1)])  # vf * (V - R) (2/B)
    np.testing.assert_allclose(ent.grad.numpy(), [-0.05, -0.05])


def test_clip_grad_norm():
    g = np.array([3.0, 4.0], np.float32)
    assert clip_grad_norm_(g, 10.0) == pytest.approx(5.0)
    np.testing.assert_allclose(g, [3, 4])
    clip_grad_norm_(g, 1.0)
    np.testing.assert_allclose(np.linalg.norm(g), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- networks


def spaces():
    from gymnasium import spaces as S

    return S


def test_flat_buffer_is_the_parameters():
    S = spaces()
    m = build_model(model_config(S.Box(-1, 1, (4,)), S.Discrete(2)), seed=0)
    assert m.flat.dtype == np.float32 and m.flat.size == sum(p.numel() for p in m.parameters())
    w = np.random.default_rng(0).normal(size=m.flat.size).astype(np.float32)
    m.set_flat(w)
    np.testing.assert_array_equal(torch.cat([p.detach().reshape(-1) for p in m.parameters()]).numpy(), w)
    x = torch.randn(3, 4)
    head, v = m(x)
    (head.sum() + v.sum()).backward()
    np.testing.assert_array_equal(m.flat_grad(), torch.cat([p.grad.reshape(-1) for p in m.parameters()]).numpy())


def test_init_depends_only_on_seed():
    S = spaces()
    cfg = model_config(S.Box(-1, 1, (4,)), S.Discrete(2))
    a, b, c = build_model(cfg, seed=1), build_model(cfg, seed=1), build_model(cfg, seed=2)
    np.testing.assert_array_equal(a.flat, b.flat)
    assert not np.array_equal(a.flat, c.flat)


@pytest.mark.parametrize("discrete", [True, False])
def test_numpy_forward_matches_torch(discrete):
    S = spaces()
    act = S.Discrete(3) if discrete else S.Box(-2, 2, (2,))
    m = build_model(model_config(S.Box(-1, 1, (5,)), act), seed=3)
    m.set_flat(np.random.default_rng(1).normal(size=m.flat.size).astype(np.float32) * 0.3)
    obs = np.random.default_rng(2).normal(size=(7, 5)).astype(np.float32)
    h_np, v_np = m.numpy_forward(obs)
    with torch.no_grad():
        h_t, v_t = m(m.obs_tensor(obs))
    np.testing.assert_allclose(h_np, h_t.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v_np, v_t.numpy(), rtol=1e-4, atol=1e-5)


def test_categorical_matches_torch_distributions():
    S = spaces()
    m = build_model(model_config(S.Box(-1, 1, (2,)), S.Discrete(4)), seed=0)
    logits = torch.randn(6, 4)
    acts = torch.tensor([0, 1, 2, 3, 1, 0])
    logp, ent = m.log_prob_entropy(logits, acts)
    d = torch.distributions.Categorical(logits=logits)
    np.testing.assert_allclose(logp.numpy(), d.log_prob(acts).numpy(), rtol=1e-5)
    np.testing.assert_allclose(ent.numpy(), d.entropy().numpy(), rtol=1e-5)


def test_gaussian_matches_torch_distributions():
    S = spaces()
    m = build_model(model_config(S.Box(-1, 1, (2,)), S.Box(-1, 1, (3,)), log_std_init=-0.5), seed=0)
    mean = torch.randn(5, 3)
    acts = torch.randn(5, 3)
    logp, ent = m.log_prob_entropy(mean, acts)
    d = torch.distributions.Normal(mean, torch.exp(m.log_std.detach()).expand_as(mean))
    np.testing.assert_allclose(logp.detach().numpy(), d.log_prob(acts).sum(-1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(ent.detach().numpy(), d.entropy().sum(-1).numpy(), rtol=1e-5)


def test_sampling_follows_the_policy():
    S = spaces()
    m = build_model(model_config(S.Box(-1, 1, (2,)), S.Discrete(3)), seed=0)
    logits = np.log(np.array([[0.2, 0.5, 0.3]] * 20000))
    a = m.sample(logits, np.random.default_rng(0))
    np.testing.assert_allclose(np.bincount(a, minlength=3) / a.size, [0.2, 0.5, 0.3], atol=0.015)
    assert (m.sample(logits, None, deterministic=True) == 1).all()


def test_box_actions_are_clipped_for_the_env_only():
    S = spaces()
    m = build_model(model_config(S.Box(-1, 1, (2,)), S.Box(-1, 2, (1,))), seed=0)
    np.testing.assert_array_equal(m.env_actions(np.array([[-5.0], [0.5], [9.0]], np.float32)), [[-1], [0.5], [2]])


@pytest.mark.parametrize("shape,kind", [((4, 84, 84), "nature_cnn"), ((4, 10, 10), "minatar_cnn")])
def test_image_networks(shape, kind):
    S = spaces()
    high = 255 if kind == "nature_cnn" else 1
    cfg = model_config(S.Box(0, high, shape, np.uint8), S.Discrete(6))
    assert cfg["kind"] == kind
    assert cfg["obs"]["scale"] == (1 / 255 if high == 255 else 1.0)
    m = build_model(cfg, seed=0)
    obs = np.random.default_rng(0).integers(0, high + 1, (2,) + shape).astype(np.uint8)
    head, v = m(m.obs_tensor(obs))
    assert head.shape == (2, 6) and v.shape == (2,)


@pytest.mark.parametrize("shape", [(4, 84, 84), (4, 10, 10)])
def test_attached_dense_layer_has_autograds_gradient(shape):
    """attach_dense(f, z) with z = dense(f) computed without a graph: same value, same gradients."""
    S = spaces()
    m = build_model(model_config(S.Box(0, 1, shape, np.float32), S.Discrete(6)), seed=0)
    f = torch.randn(7, m.trunk[1].in_features, dtype=torch.float64).float().requires_grad_(True)
    gz = torch.randn(7, m.trunk[1].out_features)
    lin = m.trunk[1]
    ref = torch.autograd.grad(m.dense(f), [f, lin.weight, lin.bias], gz)
    with torch.no_grad():
        z = m.dense(f)
    assert (z == 0).any() and (z > 0).any()  # both sides of the ReLU are exercised
    out = m.attach_dense(f, z)
    assert torch.equal(out, z)
    for a, b in zip(torch.autograd.grad(out, [f, lin.weight, lin.bias], gz), ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_unsupported_spaces_are_one_line_errors():
    S = spaces()
    with pytest.raises(UnsupportedSpace, match="action space") as e:
        model_config(S.Box(-1, 1, (2,)), S.MultiDiscrete([2, 3]))
    assert "\n" not in str(e.value)
    with pytest.raises(UnsupportedSpace, match="observation space"):
        model_config(S.Tuple((S.Discrete(2), S.Discrete(3))), S.Discrete(2))


@pytest.mark.parametrize("vf,ent", [(0.5, 0.01), (0.25, 0.0), (1.0, 0.2)])
@pytest.mark.parametrize("discrete,act,norm", [(True, "tanh", False), (True, "relu", True), (False, "tanh", False),
                                               (False, "tanh", True)])
def test_numpy_mlp_gradient_equals_torch_autograd(discrete, act, norm, vf, ent):
    S = spaces()
    action = S.Discrete(3) if discrete else S.Box(-1, 1, (2,))
    m = build_model(model_config(S.Box(-1, 1, (5,)), action, hidden=(16, 8), activation=act, log_std_init=-0.3),
                    seed=0)
    rng = np.random.default_rng(0)
    m.set_flat(m.flat + rng.normal(size=m.flat.size).astype(np.float32) * 0.2)
    B = 12
    obs = rng.normal(size=(B, 5)).astype(np.float32)
    acts = rng.integers(0, 3, B) if discrete else rng.normal(size=(B, 2)).astype(np.float32)
    adv, ret = rng.normal(size=B).astype(np.float32), rng.normal(size=B).astype(np.float32)
    head, v = m(m.obs_tensor(obs))
    logp, ent_t = m.log_prob_entropy(head, torch.as_tensor(acts))
    loss, parts = a2c_loss(logp, ent_t, v, torch.as_tensor(adv), torch.as_tensor(ret), vf, ent, norm)
    m.zero_grad()
    loss.backward()
    expected = m.flat_grad()
    got_parts = {}
    got = m.mlp_loss_grad(obs, acts, adv, ret, vf, ent, norm, np.empty(m.flat.size, np.float32), got_parts)
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-6)
    # the loss parts it reports (the live log's losses/*) are a2c_loss's
    assert set(got_parts) == set(parts)
    for k, t in parts.items():
        np.testing.assert_allclose(got_parts[k], float(t.detach()), rtol=1e-4, atol=1e-6, err_msg=k)
