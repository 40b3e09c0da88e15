"""Initializers (statistics on large draws), optimizers (step values vs hand formulas), schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from digitlab.errors import ConfigError, TrainingError
from digitlab.nn.init import initialize, parse_init
from digitlab.nn.optim import SGD, Adam, constant, cosine, make_optimizer, make_schedule, step_decay, warmup

FAN_IN, FAN_OUT = 400, 500


def draw(spec, dtype=np.float32, seed=0):
    return initialize(spec, (FAN_IN, FAN_OUT), np.random.default_rng(seed), dtype=dtype)


@pytest.mark.parametrize("spec,std", [
    ("he_normal", math.sqrt(2 / FAN_IN)),
    ("glorot_normal", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("glorot_uniform", math.sqrt(6 / (FAN_IN + FAN_OUT)) / math.sqrt(3)),
    ("uniform_scaled", 1 / math.sqrt(FAN_IN * FAN_OUT) / math.sqrt(3)),
    ("normal", 0.01),
    ("normal(0.2)", 0.2),
    ("normal:0.05", 0.05),
    ({"name": "normal", "std": 0.3}, 0.3),
])
def test_initializer_statistics(spec, std):
    w = draw(spec)
    assert w.shape == (FAN_IN, FAN_OUT) and w.dtype == np.float32
    assert abs(w.mean()) < 0.01 * std * 5                      # 200k draws: the mean is ~0
    assert w.std() == pytest.approx(std, rel=0.01)


@pytest.mark.parametrize("spec,limit", [
    ("glorot_uniform", math.sqrt(6 / (FAN_IN + FAN_OUT))),
    ("uniform_scaled", 1 / math.sqrt(FAN_IN * FAN_OUT)),
])
def test_uniform_initializers_stay_in_their_bounds(spec, limit):
    w = draw(spec, dtype=np.float64)
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.99 * limit


def test_zeros_needs_no_generator():
    w = initialize("zeros", (3, 2), None)
    np.testing.assert_array_equal(w, np.zeros((3, 2)))


def test_initializers_are_deterministic_per_generator_and_dtype_independent():
    np.testing.assert_array_equal(draw("he_normal", seed=1), draw("he_normal", seed=1))
    assert not np.array_equal(draw("he_normal", seed=1), draw("he_normal", seed=2))
    np.testing.assert_array_equal(draw("he_normal", np.float64).astype(np.float32), draw("he_normal"))


def test_initializer_errors():
    with pytest.raises(ConfigError, match="Generator"):
        initialize("he_normal", (3, 2), None)
    with pytest.raises(ConfigError, match="xavier"):
        parse_init("xavier")
    with pytest.raises(ConfigError, match="not a number"):
        parse_init("normal(abc)")
    with pytest.raises(ConfigError, match="only 'normal'"):
        parse_init("he_normal(0.1)")


# -- optimizers: tiny hand-computable cases --------------------------------------------------------------

def run(opt, grads_per_step, lr=0.1, p0=(1.0, -2.0)):
    p = np.array(p0)
    for g in grads_per_step:
        opt.step([p], [np.array(g)], lr)
    return p


def test_sgd_step():
    np.testing.assert_allclose(run(SGD(), [[0.5, -1.0]]), [1.0 - 0.05, -2.0 + 0.1])


def test_sgd_momentum_two_steps():
    # v1 = g1 = [1, 2]; p1 = p0 - 0.1 v1.  v2 = 0.9 v1 + g2 = [0.9 + 1, 1.8 - 1]; p2 = p1 - 0.1 v2
    p = run(SGD(momentum=0.9), [[1.0, 2.0], [1.0, -1.0]])
    np.testing.assert_allclose(p, [1.0 - 0.1 - 0.19, -2.0 - 0.2 - 0.08])


def test_sgd_nesterov_two_steps():
    # v1 = [1, 2]; p1 = p0 - 0.1 (g1 + 0.9 v1) = p0 - 0.1 [1.9, 3.8]
    # v2 = 0.9 v1 + g2 = [1.9, 0.8]; p2 = p1 - 0.1 (g2 + 0.9 v2) = p1 - 0.1 [2.71, -0.28]
    p = run(SGD(momentum=0.9, nesterov=True), [[1.0, 2.0], [1.0, -1.0]])
    np.testing.assert_allclose(p, [1.0 - 0.19 - 0.271, -2.0 - 0.38 + 0.028])


def test_weight_decay_adds_l2_gradient():
    # g_eff = g + 0.5 p = [0 + 0.5, 0 - 1]; p1 = p0 - 0.1 g_eff
    np.testing.assert_allclose(run(SGD(weight_decay=0.5), [[0.0, 0.0]]), [0.95, -1.9])


def test_adam_two_steps():
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.01
    g1, g2 = np.array([0.5, -1.0]), np.array([0.1, 0.3])
    p, m, v = np.array([1.0, -2.0]), 0.0, 0.0
    for t, g in enumerate([g1, g2], start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(run(Adam(), [g1, g2], lr=lr), p, rtol=1e-12)
    # the first Adam step moves every coordinate by about lr, whatever the gradient's size
    np.testing.assert_allclose(run(Adam(), [[1e-3, -50.0]], lr=lr), [1.0 - lr, -2.0 + lr], rtol=1e-6)


def test_adam_with_weight_decay():
    lr, wd = 0.01, 0.1
    g_eff = np.array([0.5, -1.0]) + wd * np.array([1.0, -2.0])
    m, v = 0.1 * g_eff, 0.001 * g_eff ** 2
    expected = np.array([1.0, -2.0]) - lr * (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8)
    np.testing.assert_allclose(run(Adam(weight_decay=wd), [[0.5, -1.0]], lr=lr), expected, rtol=1e-12)


@pytest.mark.parametrize("make,expected", [
    (SGD, 1 - 0.1 * 0.5),
    # g' = 0.5 + 1e-3 * 1 = 0.501; v = g'; step g' + 0.9 v = 1.9 g'
    (lambda: SGD(momentum=0.9, nesterov=True, weight_decay=1e-3), 1 - 0.1 * 1.9 * 0.501),
    (Adam, 1 - 0.1 * 0.5 / (0.5 + 1e-8)),  # first Adam step: lr * g / (|g| + eps)
])
def test_step_updates_in_place_and_leaves_grads_alone(make, expected):
    p = np.ones((3, 2), dtype=np.float32)
    g = np.full((3, 2), 0.5, dtype=np.float32)
    before = p
    make().step([p], [g], 0.1)
    assert p is before and p.dtype == np.float32
    np.testing.assert_allclose(p, expected, rtol=1e-6)
    np.testing.assert_array_equal(g, 0.5)


@pytest.mark.parametrize("make", [lambda: SGD(momentum=0.9), lambda: SGD(momentum=0.8, nesterov=True), Adam])
def test_state_dict_resumes_bit_identically(make):
    rng = np.random.default_rng(0)
    grads = [[rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]
             for _ in range(6)]
    params = [np.ones((4, 3), np.float32), np.zeros(3, np.float32)]

    straight = make()
    p_straight = [p.copy() for p in params]
    for g in grads:
        straight.step(p_straight, g, 0.05)

    first = make()
    p_resumed = [p.copy() for p in params]
    for g in grads[:3]:
        first.step(p_resumed, g, 0.05)
    state = first.state_dict()
    assert all(isinstance(v, (np.ndarray, int, float, bool, str)) for v in state.values())
    second = make()
    second.load_state_dict(state)
    for g in grads[3:]:
        second.step(p_resumed, g, 0.05)
    for a, b in zip(p_straight, p_resumed):
        np.testing.assert_array_equal(a, b)
    assert second.t == 6


def test_state_dict_mismatch_is_a_clear_error():
    state = SGD(momentum=0.9).state_dict()
    with pytest.raises(TrainingError, match="sgd"):
        Adam().load_state_dict(state)
    with pytest.raises(TrainingError, match="momentum"):
        SGD(momentum=0.5).load_state_dict(state)


def test_optimizer_factory_and_bad_options():
    assert isinstance(make_optimizer("adam", beta1=0.8), Adam)
    with pytest.raises(ConfigError, match="rmsprop"):
        make_optimizer("rmsprop")
    with pytest.raises(ConfigError, match="momentum"):
        make_optimizer("sgd", momentum=1.5)
    with pytest.raises(ConfigError, match="Nesterov"):
        SGD(nesterov=True)
    with pytest.raises(ConfigError):
        make_optimizer("sgd", betas=(0.9, 0.99))


# -- schedules ------------------------------------------------------------------------------------------

def test_schedules_as_functions_of_the_step():
    assert [constant(0.1)(s) for s in (0, 10, 1000)] == [0.1, 0.1, 0.1]
    decay = step_decay(1.0, every=10, gamma=0.5)
    assert [decay(s) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    cos = cosine(1.0, total_steps=100, min_lr=0.1)
    assert cos(0) == pytest.approx(1.0)
    assert cos(50) == pytest.approx(0.55)
    assert cos(100) == pytest.approx(0.1) and cos(500) == pytest.approx(0.1)


def test_warmup_composes_with_any_schedule():
    sched = warmup(cosine(1.0, total_steps=100), warmup_steps=4)
    assert [sched(s) / cosine(1.0, 100)(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert sched(50) == pytest.approx(0.5)
    assert warmup(constant(0.3), 0)(0) == 0.3
    built = make_schedule("cosine", 1.0, total_steps=100, warmup_steps=4)
    assert [built(s) for s in (0, 3, 50)] == pytest.approx([sched(0), sched(3), sched(50)])
    assert make_schedule("step_decay", 1.0, 100, every=10)(10) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="linear"):
        make_schedule("linear", 1.0, 100)


def test_adam_with_zero_learning_rate_keeps_parameters_but_counts_the_step():
    opt = Adam()
    p = run(opt, [[0.5, -1.0]], lr=0.0)
    np.testing.assert_array_equal(p, [1.0, -2.0])
    assert opt.t == 1
    np.testing.assert_allclose(opt.state_dict()["m_sum.0"], [0.5, -1.0])


def test_folding_the_learning_rate_into_the_gradient_gives_the_same_step():
    g = np.array([0.5, -1.0])
    np.testing.assert_allclose(run(SGD(), [0.1 * g], lr=1.0), run(SGD(), [g], lr=0.1), rtol=1e-15)


# ------------------------------------------------------------------------------------------ one-cycle
def _onecycle_formula(k, lr, total, pct=0.3, div=25.0, final_div=1e4):
    """PyTorch OneCycleLR (cos), written out: phase ends at pct*total - 1 and total - 1."""
    start, low = lr / div, lr / div / final_div
    up = pct * total - 1
    if k <= up:
        a, b, frac = start, lr, k / up
    else:
        a, b, frac = lr, low, (k - up) / (total - 1 - up)
    return b + (a - b) * (1 + math.cos(math.pi * frac)) / 2


@pytest.mark.parametrize("total,pct", [(100, 0.3), (20, 0.25), (235, 0.2), (8, 0.5)])
def test_onecycle_learning_rate_at_each_step(total, pct):
    s = make_schedule("onecycle", 0.01, total, pct_start=pct)
    assert s(0) == pytest.approx(0.01 / 25, rel=1e-12)  # starts at lr / div
    peak = round(pct * total) - 1
    assert s(peak) == pytest.approx(0.01, rel=1e-12)  # reaches lr at step pct*total - 1, not one later
    assert s(peak + 1) < 0.01 and s(peak - 1) < 0.01
    assert s(total - 1) == pytest.approx(0.01 / 25 / 1e4, rel=1e-9)  # lr / (div * final_div) at the LAST step
    assert s(total - 2) > s(total - 1) and s(total + 5) == s(total - 1)
    for k in range(total):
        assert s(k) == pytest.approx(_onecycle_formula(k, 0.01, total, pct), rel=1e-12)


def test_onecycle_with_a_fractional_phase_end():
    s = make_schedule("onecycle", 1.0, 7, pct_start=0.5)  # phase boundary at step 2.5, as PyTorch
    assert [s(k) for k in range(7)] == pytest.approx([_onecycle_formula(k, 1.0, 7, 0.5) for k in range(7)])
    assert s(2) < 1.0 and s(3) < 1.0 and s(2) > s(1)


def test_onecycle_matches_torch_when_installed():
    torch = pytest.importorskip("torch")
    for total in (10, 47):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.05)
        ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=total, cycle_momentum=False)
        ours = make_schedule("onecycle", 0.05, total)
        for k in range(total):
            assert ours(k) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
            opt.step()
            ref.step()


def test_onecycle_bad_options_are_config_errors():
    for kwargs in ({"pct_start": 0.0}, {"pct_start": 1.0}, {"div": 0.0}, {"final_div": -1.0}):
        with pytest.raises(ConfigError, match="onecycle"):
            make_schedule("onecycle", 0.1, 100, **kwargs)
    with pytest.raises(ConfigError, match="total_steps"):
        make_schedule("onecycle", 0.1, 1)


def test_recipe_onecycle_reaches_the_optimizer_step_by_step(tmp_path, monkeypatch):
    """train_recipe passes schedule(step) for step 0, 1, ... to the optimizer (an off-by-one fails)."""
    from digitlab.nn.optim import Optimizer
    from digitlab.train import train_recipe

    seen = []
    real = Optimizer.step
    monkeypatch.setattr(Optimizer, "step", lambda self, p, g, lr: (seen.append(lr), real(self, p, g, lr))[1])
    train_recipe("mlp", {"dataset": "mnist-sample", "hidden": (8,), "steps": 10, "batch_size": 1000,
                         "optimizer": "adam", "lr": 0.02, "schedule": "onecycle", "shift": 0},
                 out_dir=tmp_path / "run", quiet=True, report=False)
    want = make_schedule("onecycle", 0.02, 10)
    assert seen == [want(k) for k in range(10)]


def test_onecycle_beta1_is_the_inverse_cycle():
    from digitlab.nn.optim import onecycle_beta1

    b = onecycle_beta1(20, pct_start=0.25)
    assert b(0) == pytest.approx(0.95) and b(4) == pytest.approx(0.85) and b(19) == pytest.approx(0.95)
    assert b(3) > 0.85 and b(5) > 0.85 and b(18) < 0.95
    with pytest.raises(ConfigError, match="low <= high"):
        onecycle_beta1(20, low=0.96)


def test_adam_with_cycled_beta1_matches_torch_onecycle():
    """PyTorch's OneCycleLR cycles Adam's beta1 by default (cycle_momentum=True overrides the betas given)."""
    torch = pytest.importorskip("torch")
    from digitlab.nn.optim import onecycle_beta1

    total, rng = 12, np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(total)]
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.Adam([p], lr=0.01, betas=(0.7, 0.9))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=total)
    ours, w = Adam(beta2=0.9, beta1_schedule=onecycle_beta1(total)), w0.copy()
    lr = make_schedule("onecycle", 0.01, total)
    for k, g in enumerate(grads):
        p.grad = torch.tensor(g)
        opt.step()
        sched.step()
        ours.step([w], [g], lr(k))
    np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-12, atol=1e-14)
    plain = Adam(beta1=0.95, beta2=0.9)
    w2 = w0.copy()
    for k, g in enumerate(grads):
        plain.step([w2], [g], lr(k))
    assert np.abs(w2 - w).max() > 1e-6  # the cycle matters


def test_adam_cycled_beta1_resumes_from_its_state_dict():
    from digitlab.nn.optim import onecycle_beta1

    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(5) for _ in range(10)]
    a, wa = Adam(beta1_schedule=onecycle_beta1(10)), np.zeros(5)
    for g in grads:
        a.step([wa], [g], 0.01)
    b, wb = Adam(beta1_schedule=onecycle_beta1(10)), np.zeros(5)
    for g in grads[:6]:
        b.step([wb], [g], 0.01)
    c = Adam(beta1_schedule=onecycle_beta1(10))
    c.load_state_dict(b.state_dict())
    for g in grads[6:]:
        c.step([wb], [g], 0.01)
    np.testing.assert_array_equal(wa, wb)


def test_recipe_cycle_beta1_follows_the_whole_run(tmp_path, monkeypatch):
    """cycle_beta1 through train_recipe: Adam's beta1 at step k is onecycle_beta1(total steps of the run)(k)."""
    from digitlab.nn.optim import onecycle_beta1
    from digitlab.train import train_recipe

    seen = []
    real = Adam.step

    def spy(self, params, grads, lr):
        real(self, params, grads, lr)
        seen.append(self._b1)

    monkeypatch.setattr(Adam, "step", spy)
    recipe = {"dataset": "mnist-sample", "hidden": (8,), "steps": 15, "batch_size": 1000, "optimizer": "adam",
              "lr": 0.02, "schedule": "onecycle", "shift": 0, "cycle_beta1": True}
    train_recipe("mlp", recipe, out_dir=tmp_path / "run", quiet=True, report=False)
    want = onecycle_beta1(15)
    assert seen == [want(k) for k in range(15)]
    seen.clear()
    train_recipe("mlp", {**recipe, "cycle_beta1": False}, out_dir=tmp_path / "plain", quiet=True, report=False)
    assert seen == [0.9] * 15
