"""KD and Reflow: each loss vanishes at its oracle and not when perturbed; Reflow's target on a Gaussian whose
coupling is known in closed form; KD is ode_init at sigma 1 on the same pairs (bit-identical losses); the plugins
read only the coupling of a trajectory; the tiny configs train through the trainer."""
from __future__ import annotations

import math

import pytest
import torch

from vidforce.config import load
from vidforce.diffusion import NUM_TRAIN_TIMESTEPS, add_noise
from vidforce.objectives import REGISTRY, Batch, Nets, StepContext, build, ode_init
from vidforce.objectives import trajectory as TD
from vidforce.recipes.ode_pairs import make_ode_pairs
from vidforce.rollout import RolloutPlan
from vidforce.sampling import Sampler
from vidforce.toy.gmm import GMM
from vidforce.toy.nets import OracleFlowMap
from vidforce.toy.train import flow_of
from vidforce.train import trainer

from tests.models.helpers import tiny_causal
from tests.train.helpers import PROMPTS, ROOT

B = 64


def gaussian(mean=(0.7, -0.4), std=0.5) -> GMM:
    """One isotropic Gaussian ``N(m, c^2 I)``: its flow-matching ODE maps ``eps`` to ``m + c eps``
    (``x_s = (1 - s) m + sqrt((1 - s)^2 c^2 + s^2) eps``), so the coupling is closed-form."""
    return GMM(torch.tensor([mean], dtype=torch.float64), torch.tensor([std], dtype=torch.float64),
               torch.ones(1, dtype=torch.float64))


def draws(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 2, generator=g, dtype=torch.float64), torch.rand(B, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("bump", [0.0, 0.5])
def test_kd_vanishes_only_at_the_oracle_one_step_map(bump):
    """The oracle's flow at sigma 1 is ``eps - Phi(eps, 1 -> 0)``, so its one step lands on the exact endpoint."""
    gmm, (eps, _) = GMM.ring(), draws()
    x0 = gmm.flow_map(eps, 1.0, 0.0, steps=256)
    loss = TD.kd_loss(flow_of(OracleFlowMap(gmm, steps=128, bump=bump)), eps, x0).item()
    assert (loss < 1e-10) if bump == 0 else (loss > 1e-2), loss


def test_the_gaussian_coupling_is_the_closed_form_affine_map():
    gmm, (eps, _) = gaussian(), draws()
    torch.testing.assert_close(gmm.flow_map(eps, 1.0, 0.0, steps=64), gmm.means + gmm.stds * eps, rtol=0, atol=1e-8)


def test_reflow_regresses_eps_minus_the_coupled_endpoint():
    """A zero student's loss is the mean square of the target: ``eps - Phi(eps) = (1 - c) eps - m`` in closed form."""
    gmm, (eps, t) = gaussian(), draws()
    m, c = gmm.means, gmm.stds
    loss = TD.reflow_loss(lambda x, s: torch.zeros_like(x), eps, gmm.flow_map(eps, 1.0, 0.0), t).item()
    assert loss == pytest.approx(((1 - c) * eps - m).square().mean().item(), rel=1e-6)   # fp32 loss


@pytest.mark.parametrize("bump", [0.0, 0.1])
def test_reflow_vanishes_only_at_the_straight_line_velocity(bump):
    """On the Gaussian the straight-line velocity is closed-form: ``(1 - c) eps(x_t) - m`` with ``eps(x_t) =
    (x_t - (1 - t) m) / ((1 - t) c + t)`` (``x_t = (1 - t) (m + c eps) + t eps`` solved for ``eps``)."""
    gmm, (eps, t) = gaussian(), draws()
    m, c = gmm.means, gmm.stds

    def straight(x, s):
        e = (x - (1 - s[:, None]) * m) / ((1 - s[:, None]) * c + s[:, None])
        return (1 - c) * e - m + bump
    loss = TD.reflow_loss(straight, eps, gmm.flow_map(eps, 1.0, 0.0), t).item()
    assert (loss < 1e-12) if bump == 0 else loss == pytest.approx(bump ** 2, rel=1e-5)


@pytest.mark.parametrize("gmm", [gaussian(), GMM.ring()], ids=["gaussian", "ring"])
def test_the_teachers_exact_flow_is_not_a_reflow_fixed_point(gmm):
    """The teacher's own paths are not straight-at-constant-speed (the Gaussian's runs at a varying speed
    ``d/ds sqrt((1 - s)^2 c^2 + s^2)``, the ring's bend): regressing its couplings on straight lines moves its field."""
    eps, t = draws()
    assert TD.reflow_loss(lambda x, s: gmm.velocity(x, s), eps, gmm.flow_map(eps, 1.0, 0.0, 128), t).item() > 1e-2


# ---------------------------------------------------------------- video plugins

def _ctx(name: str, traj: torch.Tensor, *extra: str):
    cfg = load(ROOT / f"configs/tiny/{name}.yaml", ["data.prompts=unused.txt", *extra])
    torch.manual_seed(0)
    batch = Batch(cond=torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1)), uncond=torch.zeros(1, 8, 16),
                  trajectory=traj)
    return StepContext(Nets(tiny_causal()), batch, RolloutPlan(0, 6, 0), Sampler.from_config(cfg.schedule), cfg,
                       torch.Generator().manual_seed(0), (12, 4, 4))


def _pairs(steps=1, seed=2):
    return torch.randn(1, steps + 1, 6, 12, 4, 4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("clean_context", [False, True])
def test_kd_is_ode_init_at_sigma_one_on_the_same_pairs(clean_context):
    """On one-step pairs ode_init can only pick step 0 (sigma 1): its loss is KD's, bit for bit, and both read the
    pairs file through one reader and one regression."""
    traj = _pairs()
    kd = _ctx("kd", traj, f"objective.kd.clean_context={clean_context}")
    ode = _ctx("ode_init", traj, f"objective.ode_init.clean_context={clean_context}", "schedule.denoising_steps=[1000]")
    ode.nets = kd.nets
    a = build(kd.cfg).generator_loss(kd)[0]
    b = build(ode.cfg).generator_loss(ode)[0]
    assert torch.isfinite(a) and torch.equal(a, b)
    assert REGISTRY["kd"].data == REGISTRY["ode_init"].data == "ode_pairs"
    assert trainer.data_input(kd.cfg, "ode_pairs")[0] == "objective.ode_init.pairs"
    assert TD.endpoint_loss is ode_init.endpoint_loss and TD.pairs_of is ode_init.pairs_of


def test_kd_needs_a_one_step_sampler():
    with pytest.raises(ValueError, match=r"schedule.denoising_steps=\[1000\]"):
        build(load(ROOT / "configs/tiny/kd.yaml", ["schedule.denoising_steps=[1000,500]"]))


@pytest.mark.parametrize("name", ["kd", "reflow"])
def test_plugins_read_only_the_coupling_of_a_trajectory(name):
    """The intermediate latents are NaN: the losses stay finite."""
    traj = _pairs(steps=4)
    traj[:, 1:-1] = float("nan")
    ctx = _ctx(name, traj)
    loss, logs = build(ctx.cfg).generator_loss(ctx)
    assert torch.isfinite(loss) and loss.item() > 0 and math.isfinite(logs[f"{name}_loss"])


@pytest.mark.parametrize("clean_context", [False, True])
def test_reflow_feeds_the_straight_line_between_the_coupled_pair(clean_context):
    """The generator sees ``(1 - s) x0 + s eps`` at a sigma ``s`` drawn per chunk, and (clean context) the endpoints
    at t = 0; the loss is the flow-matching error against ``eps - x0``."""
    traj = _pairs(steps=2)
    ctx = _ctx("reflow", traj, f"objective.reflow.clean_context={clean_context}")
    seen = {}
    model, original = ctx.nets.generator, ctx.nets.generator.forward_full

    def spy(x, t, context=None, text_kv=None, clean=None, clean_t=None):
        out = original(x, t, context, text_kv, clean, clean_t)
        seen.update(x=x, t=t, clean=clean, clean_t=clean_t, out=out)
        return out
    model.forward_full = spy
    loss, _ = build(ctx.cfg).generator_loss(ctx)
    eps, x0, s = traj[:, 0], traj[:, -1], seen["t"] / NUM_TRAIN_TIMESTEPS
    assert torch.equal(s[:, :3], s[:, :1].expand(1, 3)) and torch.equal(s[:, 3:], s[:, 3:4].expand(1, 3))
    assert s[0, 0] != s[0, 3]                                           # one sigma per chunk
    torch.testing.assert_close(seen["x"], add_noise(x0, eps, s))
    torch.testing.assert_close(loss, (seen["out"] - (eps - x0)).square().mean())
    if clean_context:
        assert torch.equal(seen["clean"], x0) and bool((seen["clean_t"] == 0).all())
    else:
        assert seen["clean"] is None


# ---------------------------------------------------------------- the tiny configs through the trainer

@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """6 teacher ODE trajectories of the tiny teacher (4 step-list sigmas + endpoint)."""
    root = tmp_path_factory.mktemp("trajectory_pairs")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cfg = load(ROOT / "configs/tiny/base.yaml", [f"data.prompts={prompts}"])
    return make_ode_pairs(cfg, root / "pairs.safetensors", num=6, steps=8, batch=3, seed=0)


@pytest.mark.parametrize("name", ["kd", "reflow"])
def test_tiny_config_trains_with_finite_losses_and_moving_weights(pairs, tmp_path, name):
    run = trainer.setup(load(ROOT / f"configs/tiny/{name}.yaml", [f"objective.ode_init.pairs={pairs}",
                                                                   f"train.run_dir={tmp_path}", "train.steps=3"]))
    gen = run.engines.nets().generator
    before = {n: p.detach().clone() for n, p in gen.named_parameters()}
    logs = [trainer.train_step(run, step) for step in range(3)]
    assert all(math.isfinite(m["loss/generator"]) and m["loss/generator"] > 0 for m in logs)
    assert "loss/critic" not in logs[0] and len({m["loss/generator"] for m in logs}) == 3
    assert any(not torch.equal(p, before[n]) for n, p in gen.named_parameters())
