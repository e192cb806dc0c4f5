"""Flow-matching schedule: closed forms, conversions that invert each other, CFG, error messages."""
import pytest
import torch

from vidforce import diffusion as D


def test_warp_steps_closed_form():
    got = D.warp_steps([1000, 750, 500, 250], 5.0)
    # 1000 * 5 s / (1 + 4 s) at s = 1, 3/4, 1/2, 1/4
    assert got == pytest.approx([1000.0, 937.5, 2500.0 / 3.0, 625.0], rel=0, abs=1e-9)


def test_warp_steps_shift_one_is_identity():
    assert D.warp_steps([1000, 600, 10, 0], 1.0) == pytest.approx([1000, 600, 10, 0], abs=1e-9)


def test_shift_sigma_known_values():
    assert D.shift_sigma(0.5, 3.0) == pytest.approx(0.75)              # 1.5 / 2
    assert D.shift_sigma(0.2, 5.0) == pytest.approx(1.0 / 1.8)         # 1 / (1 + 0.8)
    assert D.shift_sigma(0.0, 5.0) == 0.0 and D.shift_sigma(1.0, 5.0) == pytest.approx(1.0)
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(D.shift_sigma(s, 1.0), s)


@pytest.mark.parametrize("shift", [0.5, 3.0, 8.0])
def test_shift_sigma_monotone_and_direction(shift):
    s = torch.linspace(0, 1, 201, dtype=torch.float64)
    out = D.shift_sigma(s, shift)
    assert (out.diff() > 0).all()
    inner = out[1:-1] - s[1:-1]
    assert (inner > 0).all() if shift > 1 else (inner < 0).all()   # shift > 1 spends more time at high noise


def test_t_from_sigma():
    s = torch.tensor([[0.0, 0.25], [0.5, 1.0]])
    assert torch.equal(D.t_from_sigma(s), torch.tensor([[0.0, 250.0], [500.0, 1000.0]]))
    assert D.t_from_sigma(0.9375) == 937.5 and isinstance(D.t_from_sigma(0.9375), float)


def _random_triplet(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(2, 3, 4, 5, 6, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    s = torch.rand(2, 3, generator=g, dtype=torch.float64) * 0.9 + 0.05     # per-frame sigmas [B, T]
    return x0, eps, s


def test_conversions_invert_each_other_with_per_frame_sigmas():
    x0, eps, s = _random_triplet()
    x_t = D.add_noise(x0, eps, s)
    v = D.flow_target(x0, eps)
    assert torch.allclose(D.x0_from_flow(x_t, v, s), x0, atol=1e-12)
    assert torch.allclose(D.eps_from_flow(x_t, v, s), eps, atol=1e-12)


def test_add_noise_is_per_frame():
    x0, eps, s = _random_triplet(1)
    x_t = D.add_noise(x0, eps, s)
    b, f = 1, 2
    ref = (1 - s[b, f]) * x0[b, f] + s[b, f] * eps[b, f]
    assert torch.allclose(x_t[b, f], ref)
    ones = D.add_noise(x0, eps, torch.ones(2))                   # [B] sigmas broadcast too
    assert torch.allclose(ones, eps)


def test_flow_target_sign():
    x0, eps = torch.zeros(1, 1, 1, 1, 1), torch.ones(1, 1, 1, 1, 1)
    assert D.flow_target(x0, eps).item() == 1.0                  # v = eps - x0


def test_cfg_endpoints_and_extrapolation():
    g = torch.Generator().manual_seed(0)
    u, c = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    assert torch.allclose(D.cfg(u, c, 1.0), c, rtol=0, atol=1e-6)       # g = 1: unguided (cond)
    assert torch.equal(D.cfg(u, c, 0.0), u)
    assert torch.allclose(D.cfg(u, c, 3.0), u + 3 * (c - u))


def test_cfg_conventions_closed_forms():
    """``cond``: c + g (c - u) (Self Forcing's code) equals ``uncond`` at g + 1; g = 0 is unguided there."""
    g = torch.Generator().manual_seed(1)
    u, c = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(D.cfg(u, c, 3.0, "cond"), c + 3 * (c - u))
    assert torch.allclose(D.cfg(u, c, 3.0, "cond"), D.cfg(u, c, 4.0, "uncond"))
    assert torch.equal(D.cfg(u, c, 0.0, "cond"), c)
    with pytest.raises(ValueError, match="convention"):
        D.cfg(u, c, 3.0, "both")


def test_sample_train_sigma_clamp_rule_distribution():
    """Self Forcing's DMD rule with shift 5, [0.02, 0.98]: t uniform over the 1000 integers, shifted, clamped.
    Closed forms: P(sigma = 0.98) = P(t >= 908) = 0.092 (shift_sigma(t / 1000) >= 0.98 iff t / 1000 >= 0.98 /
    1.08 = 0.9074); P(sigma < 0.093) = P(t <= 20) = 0.021; P(sigma = 0.02) = P(t <= 4) = 0.005."""
    g = torch.Generator().manual_seed(0)
    s = D.sample_train_sigma((400_000,), 5.0, 0.02, 0.98, generator=g, rule="clamp")
    assert s.min() == pytest.approx(0.02) and s.max() == pytest.approx(0.98)
    frac = lambda m: float(m.double().mean())  # noqa: E731
    assert frac(s >= 0.98 - 1e-6) == pytest.approx(0.092, abs=0.003)
    assert frac(s < 0.093) == pytest.approx(0.021, abs=0.002)
    assert frac(s <= 0.02 + 1e-7) == pytest.approx(0.005, abs=0.001)
    median = D.shift_sigma(0.5, 5.0)                          # t = 500 at the median
    assert float(s.median()) == pytest.approx(median, abs=0.005)
    old = D.sample_train_sigma((400_000,), 5.0, 0.02, 0.98, generator=g)       # the range rule never gets there
    assert old.min() > D.shift_sigma(0.02, 5.0) - 1e-6 and frac(s < D.shift_sigma(0.02, 5.0) - 1e-6) > 0.015


def test_sample_train_sigma_range_is_shifted_bounds():
    g = torch.Generator().manual_seed(0)
    s = D.sample_train_sigma((4000,), 5.0, 0.02, 0.98, generator=g)
    lo, hi = D.shift_sigma(0.02, 5.0), D.shift_sigma(0.98, 5.0)
    assert s.shape == (4000,)
    assert s.min() >= lo - 1e-6 and s.max() <= hi + 1e-6
    assert s.min() < lo + 0.01 and s.max() > hi - 0.001             # the range is actually covered
    assert s.median() > 0.5                                          # shift 5 pushes the draw to high noise


def test_sample_train_sigma_is_seeded():
    a = D.sample_train_sigma((2, 3), 3.0, 0.1, 0.9, generator=torch.Generator().manual_seed(7))
    b = D.sample_train_sigma((2, 3), 3.0, 0.1, 0.9, generator=torch.Generator().manual_seed(7))
    assert a.shape == (2, 3) and torch.equal(a, b)


def test_renoise_uses_fresh_noise_at_the_next_sigma():
    x0 = torch.randn(2, 3, 4, 2, 2)
    assert torch.allclose(D.renoise(x0, torch.zeros(2, 3)), x0)
    out = D.renoise(x0, torch.ones(2), generator=torch.Generator().manual_seed(3))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out, eps)


@pytest.mark.parametrize("call,field", [
    (lambda: D.warp_steps([1000], 0.0), "schedule.shift"),
    (lambda: D.warp_steps([1200, 500], 5.0), "schedule.denoising_steps"),
    (lambda: D.warp_steps([-1], 5.0), "schedule.denoising_steps"),
    (lambda: D.sample_train_sigma((2,), 5.0, 0.5, 0.5), "min_step"),
    (lambda: D.sample_train_sigma((2,), 5.0, 0.1, 1.5), "max_step"),
    (lambda: D.sample_train_sigma((2,), 5.0, 0.1, 0.9, rule="beta"), "schedule.time_sampling"),
])
def test_bad_inputs_name_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()
