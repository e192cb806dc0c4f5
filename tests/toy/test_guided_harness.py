"""Guided distillation on the harness: the class-conditional ring's closed-form flows, the class-conditional
MLP (the unconditional one unchanged), and a short stage-1 + progressive run against the guided teacher."""
from __future__ import annotations

import math

import torch
from torch import nn

from vidforce.toy import metrics
from vidforce.toy.gmm import GMM, LabelledGMM
from vidforce.toy.nets import MLPDenoiser, sinusoidal
from vidforce.toy.progressive_train import GUIDANCE, RoundsConfig, train_guided, train_progressive
from vidforce.toy.train import HarnessConfig, euler_sample, train_teacher


def _log_density(means, stds, weights, x, s):
    """``log p_s(x)`` of the noised mixture, written out: ``sum_k pi_k N(x; (1 - s) m_k, v_k I)``."""
    v = (1 - s) ** 2 * stds.square() + s ** 2
    d2 = (x[:, None] - (1 - s) * means[None]).square().sum(-1)
    dim = means.shape[1]
    return torch.logsumexp(weights.log() - 0.5 * d2 / v - 0.5 * dim * torch.log(2 * math.pi * v), dim=-1)


def test_class_flows_are_the_score_of_each_class_and_mix_into_the_unconditional():
    gmm = LabelledGMM.ring()
    g = torch.Generator().manual_seed(0)
    x, s = 2 * torch.randn(64, 2, generator=g, dtype=torch.float64), 0.4
    parts = [gmm.part(c) for c in range(gmm.classes)]
    assert [p.means.shape[0] for p in parts] == [4, 4]
    assert torch.equal(parts[1].means, gmm.means[1::2])
    assert torch.allclose(parts[0].weights, torch.full((4,), 0.25).double())
    logp = []
    for c, p in enumerate(parts):
        k = torch.arange(c, 8, 2)                  # the class's components, picked from the full ring
        logp_c = lambda y: _log_density(gmm.means[k], gmm.stds[k], gmm.weights[k] / gmm.weights[k].sum(), y, s)
        logp.append(logp_c(x))
        h = 1e-5                                   # u_c = (-s grad log p_c - x) / (1 - s), the score by differences
        score = torch.stack([(logp_c(x + h * e) - logp_c(x - h * e)) / (2 * h) for e in torch.eye(2).double()], -1)
        u_c = p.velocity(x, torch.full((64,), s, dtype=torch.float64))
        assert torch.allclose(u_c, (-s * score - x) / (1 - s), atol=1e-6), c
    post = torch.softmax(torch.stack(logp, -1) + math.log(0.5), -1)      # p(c | x_s), class masses 1/2
    sv = torch.full((64,), s, dtype=torch.float64)
    mixed = sum(post[:, c, None] * parts[c].velocity(x, sv) for c in range(2))
    assert torch.allclose(mixed, gmm.velocity(x, sv), atol=1e-10)
    assert (parts[0].velocity(x, sv) - parts[1].velocity(x, sv)).abs().max() > 0.5      # the classes differ


def test_labelled_draws_come_from_their_class_and_keep_the_unlabelled_stream():
    gmm = LabelledGMM.ring()
    x, c = gmm.sample_labelled(4000, torch.Generator().manual_seed(1))
    nearest = (x[:, None] - gmm.means[None]).square().sum(-1).argmin(-1)
    assert (nearest % 2 == c).double().mean() > 0.99 and 0.45 < c.double().mean() < 0.55   # modes 2.9 std apart
    assert torch.equal(gmm.sample(4000, torch.Generator().manual_seed(1)), x)
    assert torch.equal(GMM.ring().sample(4000, torch.Generator().manual_seed(1)), x)


def test_unconditional_mlp_is_the_old_network_and_the_conditional_one_reads_its_label():
    torch.manual_seed(3)
    net = MLPDenoiser(2, 64, 3)
    torch.manual_seed(3)                         # the network as built before class labels existed
    old = nn.Sequential(nn.Linear(34, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(),
                        nn.Linear(64, 2))
    assert list(net.state_dict()) == [f"body.{k}" for k in old.state_dict()]
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), old.state_dict().values()))
    x, t = torch.randn(16, 2), 1000 * torch.rand(16)
    out = net(x, t, text_kv=torch.zeros(16, dtype=torch.long))          # labels are ignored
    assert torch.equal(out, old(torch.cat([x, sinusoidal(t / 1000, 32)], -1)))

    cond = MLPDenoiser(2, 64, 3, classes=2)
    c = torch.randint(2, (16,))
    assert torch.equal(cond.null(c), torch.full((16,), 2))
    assert not torch.allclose(cond(x, t, text_kv=c), cond(x, t, text_kv=cond.null(c)))


def test_guided_student_learns_the_guided_field_and_its_progressive_students_beat_guided_euler():
    gmm = LabelledGMM.ring()
    h = HarnessConfig(teacher_steps=800, batch=256, width=64)
    teacher, _ = train_teacher(gmm, h)
    assert teacher.classes == 2
    start = {k: p.clone() for k, p in teacher.state_dict().items()}
    student, secs = train_guided(teacher, gmm, h, 300)
    assert secs > 0 and all(torch.equal(start[k], p) for k, p in teacher.state_dict().items())
    rounds = train_progressive(student, gmm, h, RoundsConfig(teacher_steps=16, steps=150))

    g = torch.Generator().manual_seed(10)
    noise, c = torch.randn(2000, 2, generator=g), torch.arange(2000) % 2
    ref = euler_sample(teacher, noise, 16, c, GUIDANCE)

    def sw2(x):
        return sum(metrics.sliced_w2(x[c == k], ref[c == k]) for k in range(2)) / 2

    conditional = sw2(euler_sample(teacher, noise, 16, c))              # the unguided teacher: a different field
    assert sw2(euler_sample(student, noise, 16, c)) < 0.2 * conditional
    for n in (1, 2):
        assert sw2(euler_sample(rounds[n][0], noise, n, c)) < 0.1 * sw2(euler_sample(teacher, noise, n, c, GUIDANCE)), n
