"""The denoiser and sampling contract: conversions, guidance conventions, grids, the Euler ODE, the chunk sampler."""
import pytest
import torch

from vidforce.sampling import (Denoiser, Guidance, Sampler, chunk_step, denoise_chunk, euler, euler_grid, ode_grid,
                               refresh_cache)
from tests.models.helpers import inputs, tiny_causal


class LinearFlow:
    """A fake network ``v = a x + b t (+ c t_to)`` with text K/V ``k`` added: known answers for every conversion."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, text_kv=None, t_to=None):
        self.calls.append((t.clone(), None if t_to is None else t_to.clone(), text_kv))
        v = 0.5 * x + 1e-3 * t[..., None, None, None] + text_kv
        return v if t_to is None else v + 1e-3 * t_to[..., None, None, None]


def _x(seed=0):
    return torch.randn(2, 3, 4, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_guidance_conventions():
    assert Guidance(1.0).unguided and Guidance(0.0, "cond").unguided
    assert not Guidance(3.0, "cond").unguided and not Guidance(0.0).unguided
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert Guidance(3.0, "cond").combine(c, u).item() == 2.0 + 3.0 * 1.0      # c + g (c - u)
    assert Guidance(4.0).combine(c, u).item() == 1.0 + 4.0 * 1.0              # u + g (c - u): the same field
    with pytest.raises(ValueError, match="objective.guidance.convention"):
        Guidance(3.0, "self_forcing")


def test_denoiser_conversions_at_per_frame_sigmas():
    net, x = LinearFlow(), _x()
    sigma = torch.tensor([[0.2, 0.5, 0.9], [0.1, 0.3, 0.7]], dtype=torch.float64)
    d = Denoiser(net, text_kv=0.25)
    v = d.flow(x, sigma)
    torch.testing.assert_close(net.calls[-1][0], 1000 * sigma)             # t = T sigma per frame
    torch.testing.assert_close(v, 0.5 * x + sigma[..., None, None, None] + 0.25)
    s = sigma[..., None, None, None]
    torch.testing.assert_close(d.x0(x, sigma), x - s * v)                  # x0 = x_t - s v
    torch.testing.assert_close(d.eps(x, sigma), x + (1 - s) * v)           # eps = x_t + (1 - s) v


def test_denoiser_scalar_sigma_fills_the_chunk_in_double():
    net, x = LinearFlow(), _x()
    Denoiser(net, text_kv=0.0).flow(x, 0.9375)
    t = net.calls[-1][0]
    assert t.shape == (2, 3) and t.dtype == torch.float32 and bool((t == 937.5).all())


def test_guided_denoiser_in_both_spaces():
    """x0 guidance equals flow guidance converted to x0 (affine), in both conventions; unguided calls once."""
    x, sigma = _x(1), torch.full((2, 3), 0.6, dtype=torch.float64)
    for g in (Guidance(4.0), Guidance(3.0, "cond")):
        net = LinearFlow()
        d = Denoiser(net, text_kv=1.0, uncond_kv=-1.0, guidance=g)
        v_c, v_u = 0.5 * x + 0.6 + 1.0, 0.5 * x + 0.6 - 1.0
        torch.testing.assert_close(d.flow(x, sigma), v_u + 4.0 * (v_c - v_u))
        torch.testing.assert_close(d.x0(x, sigma), x - 0.6 * d.flow(x, sigma))
    net = LinearFlow()
    Denoiser(net, text_kv=1.0).flow(x, sigma)
    assert len(net.calls) == 1
    with pytest.raises(ValueError, match="unconditional"):
        Denoiser(net, text_kv=1.0, guidance=Guidance(2.0))


def test_second_time_reaches_the_network():
    net, x = LinearFlow(), _x()
    out = Denoiser(net, text_kv=0.0).flow(x, 0.8, sigma_to=0.3)
    assert bool((net.calls[-1][1] == 300.0).all())
    torch.testing.assert_close(out, 0.5 * x + 0.8 + 0.3)


def test_out_dtype_casts_before_combining():
    net = lambda x, t, text_kv=None: (x * text_kv).to(torch.bfloat16)  # noqa: E731
    x = torch.full((1, 1, 1, 1, 1), 1.0 / 3.0)
    d = Denoiser(net, 1.0, 0.0, Guidance(2.0), out_dtype=torch.float32)
    assert d.flow(x, 0.5).dtype == torch.float32


def test_euler_grid_and_ode_grid():
    grid = euler_grid(4, 3.0)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and len(grid) == 5
    assert grid[2] == pytest.approx(0.75)                                  # 3 * 0.5 / (1 + 2 * 0.5)
    marks = (1.0, 0.9, 0.75, 0.5)
    merged = ode_grid(marks, 4, 3.0)
    assert set(marks) <= set(merged) and list(merged) == sorted(merged, reverse=True)
    assert len(merged) == len(set(euler_grid(4, 3.0)) | {0.9, 0.5})         # 0.75 and 1.0 were already there
    with pytest.raises(ValueError, match="euler steps"):
        euler_grid(0, 3.0)


def test_euler_follows_a_straight_flow_exactly_and_records_the_marks():
    x0, eps = _x(2), _x(3)
    marks = (1.0, 0.9375)
    grid = ode_grid(marks, 7, 5.0)
    out, met = euler(lambda x, s: eps - x0, eps, grid, marks)
    torch.testing.assert_close(out, x0)
    assert len(met) == 2
    torch.testing.assert_close(met[1], (1 - 0.9375) * x0 + 0.9375 * eps)   # on the straight path at the mark


def test_euler_of_a_gaussian_flow_matches_the_closed_form():
    """Data N(0, c^2): the exact flow is v = (s - (1 - s) c^2) / ((1 - s)^2 c^2 + s^2) x; its ODE maps noise
    x1 to x1 * c. Euler on a fine shifted grid is close."""
    c = 0.5
    flow = lambda x, s: (s - (1 - s) * c ** 2) / ((1 - s) ** 2 * c ** 2 + s ** 2) * x  # noqa: E731
    x1 = _x(4)
    coarse, _ = euler(flow, x1, euler_grid(50, 1.0))
    fine, _ = euler(flow, x1, euler_grid(800, 1.0))
    torch.testing.assert_close(fine, c * x1, rtol=0, atol=5e-3)
    assert (coarse - c * x1).abs().max() > (fine - c * x1).abs().max()        # first order: error falls with steps


def test_sampler_validation_and_config():
    with pytest.raises(ValueError, match="solver"):
        Sampler((1.0,), solver="heun")
    with pytest.raises(ValueError, match="end"):
        Sampler((1.0, 0.5), solver="euler")
    assert Sampler((1.0, 0.5, 0.0), solver="euler").last == 0 and Sampler((1.0, 0.5)).last == 1


def test_euler_chunk_sampler_rejects_grad():
    model = tiny_causal()
    x, _, ctx = inputs(model, batch=1, frames=3)
    cache = model.new_cache(1, 4, 4, 3, "cpu", torch.float32)
    with pytest.raises(ValueError, match="without grad"):
        denoise_chunk(model, x, cache, 0, model.text_kv(ctx), Sampler((1.0, 0.0), solver="euler"), 0, True)


def test_refresh_renoises_to_the_context_sigma():
    """context_noise > 0: the cache holds the output re-noised with fresh noise to s_c at timestep T s_c."""
    model = tiny_causal()
    x, _, ctx = inputs(model, batch=1, frames=3)
    kv = model.text_kv(ctx)
    sampler = Sampler((1.0, 0.5), context_sigma=0.1)
    with torch.no_grad():
        a = model.new_cache(1, 4, 4, 3, "cpu", torch.float32)
        refresh_cache(model, x, a, 0, kv, sampler, torch.Generator().manual_seed(4))
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
        b = model.new_cache(1, 4, 4, 3, "cpu", torch.float32)
        model.forward_chunk(0.9 * x + 0.1 * eps, torch.full((1, 3), 100.0), b, 0, write=True, text_kv=kv)
    for ka, kb in zip(a.k, b.k):
        torch.testing.assert_close(ka, kb)


def test_chunk_step_commits_the_edited_output():
    model = tiny_causal()
    x, _, ctx = inputs(model, batch=1, frames=3)
    kv = model.text_kv(ctx)
    sampler = Sampler((1.0,))
    with torch.no_grad():
        cache = model.new_cache(1, 4, 4, 3, "cpu", torch.float32)
        out = chunk_step(model, x, cache, 0, kv, sampler, 0, False, edit=lambda start, x0: torch.zeros_like(x0))
        ref = model.new_cache(1, 4, 4, 3, "cpu", torch.float32)
        refresh_cache(model, torch.zeros_like(x), ref, 0, kv, sampler)
    assert bool((out == 0).all())
    for ka, kb in zip(cache.k, ref.k):
        torch.testing.assert_close(ka, kb, rtol=0, atol=0)


def test_guided_causal_sampling_keeps_one_cache_per_branch():
    """CFG of a causal model: the first chunk is u + g (c - u) of the two one-branch samples; each output is
    committed into both caches, each under its own prompt; equal prompts give the unguided rollout."""
    from vidforce.rollout import rollout
    model = tiny_causal()
    x, _, ctx = inputs(model, batch=1, frames=6)
    kv_c, kv_u = model.text_kv(ctx), model.text_kv(torch.zeros_like(ctx))
    plain, guided = Sampler((1.0,)), Sampler((1.0,), guidance=Guidance(3.0))
    with torch.no_grad():
        c = rollout(model, x[:, :3], kv_c, plain, 0)
        u = rollout(model, x[:, :3], kv_u, plain, 0)
        caches = (model.new_cache(1, 4, 4, 6, "cpu", torch.float32), model.new_cache(1, 4, 4, 6, "cpu", torch.float32))
        out = rollout(model, x, (kv_c, kv_u), guided, 0, cache=caches)
        torch.testing.assert_close(out[:, :3], u + 3.0 * (c - u), rtol=0, atol=0)
        for branch_cache, kv in zip(caches, (kv_c, kv_u)):
            ref = model.new_cache(1, 4, 4, 6, "cpu", torch.float32)
            refresh_cache(model, out[:, :3], ref, 0, kv, plain)
            refresh_cache(model, out[:, 3:], ref, 3, kv, plain)
            for a, b in zip(branch_cache.k, ref.k):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        same = rollout(model, x, (kv_c, model.text_kv(ctx)), guided, 0)
        torch.testing.assert_close(same, rollout(model, x, kv_c, plain, 0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(cond, uncond\)"):
        rollout(model, x, kv_c, guided, 0)
    with pytest.raises(ValueError, match="without grad"):
        rollout(model, x, (kv_c, kv_u), guided, 0, grad_from=0)
