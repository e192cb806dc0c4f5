"""Self-rollout: stochastic gradient truncation and the chunk step shared with streaming."""
import pytest
import torch

from vidforce.config import RolloutConfig
from vidforce.rollout import draw_plan, rollout
from vidforce.sampling import Sampler
from tests.models.helpers import inputs, tiny_causal

SAMPLER = Sampler((1.0, 0.9375, 0.8333, 0.625), 0.0)


def _spy(model):
    """Record (start, write, grad) of every chunk forward."""
    calls = []
    orig = model.forward_chunk

    def spy(x, t, cache, start, write, **kw):
        calls.append((start, write, torch.is_grad_enabled(), float(t[0, 0])))
        return orig(x, t, cache, start, write, **kw)
    model.forward_chunk = spy
    return calls


@pytest.mark.parametrize("exit_index", [0, 2, 3])
def test_grad_only_at_exit_step_of_each_chunk(exit_index):
    model = tiny_causal()
    x, _, ctx = inputs(model, batch=1, frames=12)
    calls = _spy(model)
    out = rollout(model, x, model.text_kv(ctx), SAMPLER, exit_index)
    per_chunk = exit_index + 1 + 1                      # steps up to the exit, then the refresh pass
    assert len(calls) == 4 * per_chunk
    for c in range(4):
        chunk_calls = calls[c * per_chunk:(c + 1) * per_chunk]
        grads = [g for _, _, g, _ in chunk_calls]
        writes = [w for _, w, _, _ in chunk_calls]
        assert grads == [False] * exit_index + [True, False]
        assert writes == [True] * exit_index + [False, True]
        assert chunk_calls[-1][3] == 0.0                 # refresh at context_noise 0
    assert out.requires_grad


def test_no_gradient_crosses_chunks():
    """d(chunk c output)/d(noise of chunk c' < c) is zero, while d/d(own noise) is not (exit step 0)."""
    model = tiny_causal()
    x, _, ctx = inputs(model, batch=1, frames=9)
    noise = x.clone().requires_grad_(True)
    out = rollout(model, noise, model.text_kv(ctx), SAMPLER, exit_index=0)
    g = torch.autograd.grad(out[:, 6:].sum(), noise)[0]
    assert g[:, :6].abs().max() == 0
    assert g[:, 6:].abs().max() > 0


def test_no_grad_prefix_and_window():
    model = tiny_causal(window=6)
    x, _, ctx = inputs(model, batch=1, frames=15)
    calls = _spy(model)
    out = rollout(model, x, model.text_kv(ctx), SAMPLER, 1, grad_from=9, keep_from=6, stop=12)
    assert out.shape[1] == 6
    with_grad = {s for s, _, g, _ in calls if g}
    assert with_grad == {9}
    assert max(s for s, *_ in calls) == 9                # stops at the window's end


@pytest.mark.parametrize("mode", ["detach", "exit_step"])
def test_cache_grad_rules(mode):
    """``detach``: a later chunk's loss has no gradient w.r.t. an earlier chunk's noise; ``exit_step`` (public
    Self-Forcing code): it has, through the exit-step K/V kept in the cache. The forward values are equal."""
    model = tiny_causal()
    x, _, ctx = inputs(model, batch=1, frames=9)
    noise = x.clone().requires_grad_(True)
    kv = model.text_kv(ctx)
    out = rollout(model, noise, kv, SAMPLER, exit_index=0, cache_grad=mode)
    g = torch.autograd.grad(out[:, 6:].square().sum(), noise)[0]
    with torch.no_grad():
        ref = rollout(model, x, kv, SAMPLER, exit_index=0)
    torch.testing.assert_close(out.detach(), ref)
    if mode == "detach":
        assert g[:, :6].abs().max() == 0
    else:
        assert g[:, :3].abs().max() > 0 and g[:, 3:6].abs().max() > 0


def test_cache_grad_rules_agree_on_the_first_chunk_and_differ_later():
    """Parameter gradients of the first chunk's loss are the same under both rules; of the whole rollout's
    loss they differ (later chunks reach earlier exit steps only under ``exit_step``)."""
    model = tiny_causal()
    x, _, ctx = inputs(model, batch=1, frames=9)

    def grads(mode, frames):
        model.zero_grad()
        rng = torch.Generator().manual_seed(0)          # the same re-noising in both runs
        out = rollout(model, x, model.text_kv(ctx), SAMPLER, exit_index=1, cache_grad=mode, generator=rng)
        out[:, :frames].square().sum().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    torch.testing.assert_close(grads("detach", 3), grads("exit_step", 3))
    a, b = grads("detach", 9), grads("exit_step", 9)
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0)
    assert cosine < 0.9999


def test_edit_replaces_a_chunk_before_it_is_committed():
    """An edit of chunk 1 is returned for chunk 1 and seen by chunk 2 through the cache; chunk 0 is unchanged."""
    model = tiny_causal()
    x, _, ctx = inputs(model, batch=1, frames=9)
    kv = model.text_kv(ctx)
    with torch.no_grad():
        ref = rollout(model, x, kv, SAMPLER, 3, generator=torch.Generator().manual_seed(0))
        out = rollout(model, x, kv, SAMPLER, 3, generator=torch.Generator().manual_seed(0),
                      edit=lambda start, x0: x0 + 5.0 if start == 3 else x0)
    torch.testing.assert_close(out[:, :3], ref[:, :3], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 3:6], ref[:, 3:6] + 5.0)
    assert (out[:, 6:] - ref[:, 6:]).abs().max() > 1e-3


def test_unknown_cache_grad_is_named():
    model = tiny_causal()
    x, _, ctx = inputs(model, batch=1, frames=3)
    with pytest.raises(ValueError, match="rollout.cache_grad"):
        rollout(model, x, model.text_kv(ctx), SAMPLER, 0, cache_grad="keep")


def test_fixed_long_rollout_window_starts_cover_every_chunk_position():
    """Self-Forcing++ with a fixed N: the window start is uniform over all (N - K) / chunk + 1 positions."""
    rng = torch.Generator().manual_seed(0)
    cfg = RolloutConfig(num_frames=6, long_frames=30, long_sampling="fixed")
    counts = torch.zeros(9)
    for _ in range(3600):
        counts[draw_plan(cfg, 4, 3, rng).window_start // 3] += 1
    assert counts.min() > 0
    expected = 3600 / 9
    assert ((counts - expected).abs() < 5 * expected ** 0.5).all()     # every position within 5 sd of uniform


def test_draw_plan_choices():
    rng = torch.Generator().manual_seed(0)
    cfg = RolloutConfig(num_frames=6, long_frames=30, long_sampling="uniform")
    plans = [draw_plan(cfg, 4, 3, rng) for _ in range(200)]
    assert {p.exit_index for p in plans} == {0, 1, 2, 3}
    assert all(p.num_frames % 3 == 0 and 6 <= p.num_frames <= 30 for p in plans)
    assert all(p.window_start % 3 == 0 and p.window_start + 6 <= p.num_frames for p in plans)
    last = draw_plan(RolloutConfig(num_frames=6, exit_step="last"), 4, 3, rng)
    assert last.exit_index == 3 and last.num_frames == 6 and last.window_start == 0
    beta = [draw_plan(RolloutConfig(num_frames=6, long_frames=60, long_sampling="fixed",
                                    window_sampling="beta"), 4, 3, rng).window_start for _ in range(400)]
    assert sum(beta) / len(beta) < 0.45 * 54              # Beta(1,2) favours early windows (mean 1/3)


def test_bounds_are_checked():
    model = tiny_causal()
    x, _, ctx = inputs(model, batch=1, frames=9)
    with pytest.raises(ValueError, match="chunk-aligned"):
        rollout(model, x, model.text_kv(ctx), SAMPLER, 0, grad_from=4)
