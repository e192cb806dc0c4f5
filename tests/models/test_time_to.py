"""The DiT's optional second time input (``model.time_to``): off it is the official DiT; on it starts as the same
function (zero-initialised), loads one-time checkpoints, and its JVP in both times matches finite differences."""
import pytest
import torch
from safetensors.torch import save_file

from vidforce.models.causal import CausalWan
from vidforce.models.loading import CheckpointMismatchError, load_into
from vidforce.models.wan import WanModel
from tests.models.helpers import inputs, perturb_embedding, tiny_arch, tiny_causal, tiny_wan


def perturb(model):
    """Give the second-time embedding a non-zero last layer (a trained flow map), deterministically."""
    return perturb_embedding(model, "time_to_embedding", 7)


def test_off_has_no_second_time_and_refuses_one():
    model = tiny_wan()
    assert not hasattr(model, "time_to_embedding")
    x, t, ctx = inputs(model, frames=2)
    with pytest.raises(ValueError, match="model.time_to=true"):
        model(x, t, ctx, t_to=t / 2)


def test_on_starts_as_the_same_function_with_the_same_other_parameters():
    off, on = tiny_wan(seed=3), tiny_wan(seed=3, time_to=True)
    sd_off, sd_on = off.state_dict(), on.state_dict()
    assert set(sd_on) - set(sd_off) == set(WanModel.TIME_TO_KEYS)
    assert all(torch.equal(sd_off[k], sd_on[k]) for k in sd_off)           # created last: same draws
    x, t, ctx = inputs(off, frames=3)
    with torch.no_grad():
        ref = off(x, t, ctx)
        for t_to in (None, t / 3, torch.zeros(2)):
            assert torch.equal(on(x, t, ctx, t_to=t_to), ref)


def test_a_trained_second_time_matters_and_t_to_equal_t_is_the_default():
    model = perturb(tiny_wan(time_to=True))
    x, t, ctx = inputs(model, frames=3)
    s = torch.tensor([800.0, 300.0])
    with torch.no_grad():
        default, same = model(x, s, ctx), model(x, s, ctx, t_to=s)
        half, half_frames = model(x, s, ctx, t_to=s / 2), model(x, s, ctx, t_to=(s / 2)[:, None].expand(2, 3))
    assert torch.equal(default, same)
    assert torch.equal(half, half_frames)                     # per-sample t_to broadcasts over frames
    assert (half - default).abs().max() > 1e-3


def test_causal_paths_carry_t_to():
    model = tiny_causal(arch=tiny_arch(time_to=True))
    perturb(model)
    x, t, ctx = inputs(model, frames=6)
    t_to = t * torch.rand(t.shape, generator=torch.Generator().manual_seed(4))
    kv = model.text_kv(ctx)
    with torch.no_grad():
        full = model.forward_full(x, t, text_kv=kv, t_to=t_to)
        cache = model.new_cache(2, 4, 4, 6, x.device, x.dtype)
        chunks = torch.cat([model.forward_chunk(x[:, a:a + 3], t[:, a:a + 3], cache, a, write=True, text_kv=kv,
                                                t_to=t_to[:, a:a + 3]) for a in (0, 3)], dim=1)
        clean = torch.randn_like(x)
        clean_t = torch.zeros_like(t)
        tf_default = model.forward_full(x, t, text_kv=kv, clean=clean, clean_t=clean_t)
        tf_same = model.forward_full(x, t, text_kv=kv, clean=clean, clean_t=clean_t, t_to=t)
        tf_half = model.forward_full(x, t, text_kv=kv, clean=clean, clean_t=clean_t, t_to=t / 2)
    assert (full - chunks).abs().max() <= 1e-5
    assert (full - model.forward_full(x, t, text_kv=kv)).abs().max() > 1e-3
    assert torch.equal(tf_default, tf_same) and (tf_half - tf_same).abs().max() > 1e-3


def test_a_one_time_checkpoint_loads_into_a_two_time_model_and_not_back(tmp_path):
    off = tiny_wan(seed=0)
    save_file(off.state_dict(), str(tmp_path / "one.safetensors"))
    on = tiny_wan(seed=5, time_to=True)
    report = load_into(on, tmp_path / "one.safetensors", optional=WanModel.OPTIONAL_KEYS)
    assert set(report.missing) == set(WanModel.TIME_TO_KEYS)
    x, t, ctx = inputs(off, frames=3)
    with torch.no_grad():
        assert torch.equal(on(x, t, ctx, t_to=t / 2), off(x, t, ctx))
    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_into(on, tmp_path / "one.safetensors")            # without optional keys: strict as before
    save_file(perturb(on).state_dict(), str(tmp_path / "two.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="unexpected"):
        load_into(tiny_wan(), tmp_path / "two.safetensors", optional=WanModel.OPTIONAL_KEYS)


def test_jvp_through_both_times_matches_finite_differences():
    """MeanFlow's total derivative d/dt u(z, r, t) along (v, 0, 1) through the block-causal DiT (math attention),
    against central differences (fp32 model: step 1e-2 in timestep units, error ~1e-4 of the derivative's scale)."""
    model = perturb(CausalWan(tiny_arch(time_to=True), attention="math").eval())
    x, _, ctx = inputs(model, frames=3)
    kv = model.text_kv(ctx)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    t, r = torch.tensor([700.0, 400.0]), torch.tensor([200.0, 100.0])

    def u(x_, t_):
        return model.forward_full(x_, t_, text_kv=kv, t_to=r)
    with torch.no_grad():
        _, du = torch.func.jvp(u, (x, t), (v, torch.ones_like(t)))
        _, du_t = torch.func.jvp(lambda t_: u(x, t_), (t,), (torch.ones_like(t),))
        h = 1e-2
        fd = (u(x + h * v, t + h) - u(x - h * v, t - h)) / (2 * h)
    assert (du - fd).abs().max() < 2e-3 * du.abs().max()
    assert du_t.abs().max() > 0.05 * du.abs().max()           # the time part is not negligible


def test_the_few_step_sampler_takes_a_flow_maps_jump_to_zero():
    """x0 of a flow-map generator at sigma s is X(x, s, 0) = x - s F(x, s, 0), not x - s F(x, s, s)."""
    from vidforce.sampling import Sampler, denoise_chunk
    model = perturb(tiny_causal(arch=tiny_arch(time_to=True)))
    x, _, ctx = inputs(model, frames=3)
    kv = model.text_kv(ctx)
    with torch.no_grad():
        out = denoise_chunk(model, x, model.new_cache(2, 4, 4, 3, x.device, x.dtype), 0, kv, Sampler((0.8,)), 0,
                            False)
        s = torch.full((2, 3), 800.0)
        jump = model.forward_chunk(x, s, model.new_cache(2, 4, 4, 3, x.device, x.dtype), 0, True, text_kv=kv,
                                   t_to=torch.zeros_like(s))
        inst = model.forward_chunk(x, s, model.new_cache(2, 4, 4, 3, x.device, x.dtype), 0, True, text_kv=kv)
    torch.testing.assert_close(out, x - 0.8 * jump)
    assert (out - (x - 0.8 * inst)).abs().max() > 1e-3
