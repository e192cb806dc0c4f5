"""Training dynamics on the harness: sCM's tangent (the consistency residual, zero at the oracle) shrinks with
training, which needs a time embedding with a bounded time derivative."""
from __future__ import annotations

import torch

from vidforce.config import ObjectiveConfig
from vidforce.objectives import consistency as C
from vidforce.toy import metrics
from vidforce.toy.gmm import GMM
from vidforce.toy.nets import sinusoidal
from vidforce.toy.train import (HarnessConfig, _draw, euler_sample, flow_of, sample, student_init, train_student,
                                train_teacher)


def test_the_time_embedding_has_a_bounded_time_derivative():
    """``|d emb_i / ds| <= 1`` for every feature (sCM's c_noise(s) = s with frequencies <= 1)."""
    s = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    _, d = torch.func.jvp(lambda s_: sinusoidal(s_, 32), (s,), (torch.ones_like(s),))
    assert d.abs().max() <= 1.0 + 1e-12 and d.abs().max() > 0.9


def mean_tangent(net, teacher, gmm: GMM, sd: float) -> float:
    """Mean per-sample ``||g||`` of the sCM tangent (r = 1, the teacher's dx/dt) at fixed draws."""
    g = torch.Generator().manual_seed(5)
    x0, eps = _draw(gmm, 1024, g)
    t = 0.05 + 1.45 * torch.rand(1024, generator=g)
    x = torch.cos(t)[:, None] * x0 + sd * torch.sin(t)[:, None] * eps
    with torch.no_grad():
        dxdt = sd * C.trig_flow_of_fm(flow_of(teacher), sd)(x, t)
    _, tangent = C.scm_tangent(C.trig_flow_of_fm(flow_of(net), sd), dxdt, x, t, 1.0, sd)
    return tangent.norm(dim=1).mean().item()


def test_scm_training_shrinks_its_tangent_and_beats_euler():
    """With an embedding of ``t = 1000 s`` (``|d emb / ds|`` up to 1000) the tangent grew ~50x in 500 steps and
    the 1-step samples got worse with training (docs/results/zoo.md before the fix): this test failed."""
    gmm = GMM.ring()
    h = HarnessConfig(steps=400, teacher_steps=800, batch=256, width=64)
    teacher, _ = train_teacher(gmm, h)
    sd = ObjectiveConfig().scm.sigma_data
    before = mean_tangent(student_init("scm", teacher, gmm, h), teacher, gmm, sd)
    net, _ = train_student("scm", teacher, gmm, h)
    after = mean_tangent(net, teacher, gmm, sd)
    assert after < 0.5 * before, (before, after)
    g = torch.Generator().manual_seed(10)
    data, noise = gmm.sample(2000, g).float(), torch.randn(2000, 2, generator=g)
    one_step = metrics.sliced_w2(sample("scm", net, noise, 1, 0.0, torch.Generator().manual_seed(1)), data)
    assert one_step < 0.5 * metrics.sliced_w2(euler_sample(teacher, noise, 1), data), one_step
