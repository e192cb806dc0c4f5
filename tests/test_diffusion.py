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


def test_sigma_from_t():
    t = torch.tensor([[0, 250], [500, 1000]])
    assert torch.equal(D.sigma_from_t(t), torch.tensor([[0.0, 0.25], [0.5, 1.0]]))


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
    assert torch.allclose(D.flow_from_x0(x_t, x0, s), v, atol=1e-10)
    assert torch.allclose(D.x0_from_flow(x_t, D.flow_from_x0(x_t, x0, s), s), x0, atol=1e-10)


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
])
def test_bad_inputs_name_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()
