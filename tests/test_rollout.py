"""Self-rollout: stochastic gradient truncation and the chunk step shared with streaming."""
import pytest
import torch

from vidforce.config import RolloutConfig
from vidforce.rollout import Sampler, chunk_step, draw_plan, rollout
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


def test_streaming_step_equals_training_rollout_without_grad():
    model = tiny_causal(window=6, sink=0)
    x, _, ctx = inputs(model, batch=1, frames=9)
    kv = model.text_kv(ctx)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    with torch.no_grad():
        ref = rollout(model, x, kv, SAMPLER, 3, generator=g1)
        cache = model.new_cache(1, 4, 4, 9, "cpu", torch.float32)
        outs = [chunk_step(model, x[:, s:s + 3], cache, s, kv, SAMPLER, 3, False, g2) for s in (0, 3, 6)]
    assert torch.equal(ref, torch.cat(outs, 1))


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
