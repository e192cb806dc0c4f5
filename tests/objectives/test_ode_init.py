"""ODE-regression inputs: each chunk reads the trajectory at its own step, with that step's sigma per frame."""
import pytest
import torch

from vidforce.objectives.ode_init import ode_loss, ode_regression_inputs


def coded_trajectory(batch=2, steps=2, frames=5, shape=(1, 1, 1)):
    """``[B, S + 1, T, C, H, W]`` whose every entry is ``1000 b + 100 s + f``: a pick tells where it came from."""
    b = torch.arange(batch, dtype=torch.float64)[:, None, None]
    s = torch.arange(steps + 1, dtype=torch.float64)[None, :, None]
    f = torch.arange(frames, dtype=torch.float64)[None, None, :]
    code = 1000 * b + 100 * s + f
    return code[..., None, None, None].expand(batch, steps + 1, frames, *shape).clone()


def test_known_picks_per_chunk_with_a_partial_last_chunk():
    traj = coded_trajectory(frames=5)                        # chunks of 2: frames {0, 1}, {2, 3}, {4}
    sigmas = torch.tensor([1.0, 0.5])
    steps = torch.tensor([[0, 1, 0], [1, 1, 0]])
    x, sigma = ode_regression_inputs(traj, sigmas, steps, chunk=2)
    assert x.shape == (2, 5, 1, 1, 1) and sigma.shape == (2, 5)
    assert x[:, :, 0, 0, 0].tolist() == [[0, 1, 102, 103, 4], [1100, 1101, 1102, 1103, 1004]]
    assert sigma.tolist() == [[1.0, 1.0, 0.5, 0.5, 1.0], [0.5, 0.5, 0.5, 0.5, 1.0]]


def test_picks_whole_frames_of_a_random_trajectory():
    g = torch.Generator().manual_seed(0)
    traj = torch.randn(3, 5, 6, 2, 3, 4, generator=g)      # 4 steps + endpoint, 6 frames, chunks of 3
    sigmas = torch.tensor([1.0, 0.9, 0.7, 0.4])
    steps = torch.tensor([[3, 0], [1, 2], [0, 0]])
    x, sigma = ode_regression_inputs(traj, sigmas, steps, chunk=3)
    for b in range(3):
        for f in range(6):
            k = steps[b, f // 3].item()
            assert torch.equal(x[b, f], traj[b, k, f]) and sigma[b, f] == sigmas[k]


def test_ode_loss_is_the_mean_squared_error():
    pred, target = torch.zeros(2, 3), torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    assert ode_loss(pred, target).item() == pytest.approx((1 + 4 + 9) / 6, rel=1e-6)


def _ctx(clean_context: bool, traj):
    from vidforce.config import load
    from vidforce.objectives import Batch, Nets, StepContext
    from vidforce.rollout import RolloutPlan
    from vidforce.sampling import Sampler
    from tests.models.helpers import tiny_causal
    from tests.train.helpers import ROOT
    cfg = load(ROOT / "configs/tiny/ode_init.yaml", [f"objective.ode_init.clean_context={clean_context}",
                                                     "data.prompts=unused.txt"])
    model = tiny_causal()
    batch = Batch(cond=torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1)), uncond=torch.zeros(1, 8, 16),
                  trajectory=traj)
    return StepContext(Nets(model), batch, RolloutPlan(0, 6, 0), Sampler((1.0, 0.5)), cfg,
                       torch.Generator().manual_seed(0), (12, 4, 4))


@pytest.mark.parametrize("clean_context", [False, True])
def test_clean_context_attends_the_teacher_endpoints(clean_context):
    """With ``objective.ode_init.clean_context`` the full-sequence pass gets the teacher's clean endpoints at
    t = 0 as the causal context (as inference attends); without it, none (block-causal over noisy inputs)."""
    from vidforce.objectives.ode_init import ODEInit
    traj = torch.randn(1, 3, 6, 12, 4, 4, generator=torch.Generator().manual_seed(2))
    ctx = _ctx(clean_context, traj)
    seen = {}
    model = ctx.nets.generator
    original = model.forward_full

    def spy(x, t, context=None, text_kv=None, clean=None, clean_t=None):
        seen.update(clean=clean, clean_t=clean_t)
        return original(x, t, context, text_kv, clean, clean_t)
    model.forward_full = spy
    loss, _ = ODEInit(ctx.cfg).generator_loss(ctx)
    assert torch.isfinite(loss)
    if clean_context:
        assert torch.equal(seen["clean"], traj[:, -1]) and bool((seen["clean_t"] == 0).all())
    else:
        assert seen["clean"] is None and seen["clean_t"] is None
