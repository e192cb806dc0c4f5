"""Progressive rounds on the harness: one student per halved step count, each a trained copy of its (untouched)
teacher; the 1- and 2-step students beat the teacher's Euler at the same steps and keep its noise-to-sample coupling."""
from __future__ import annotations

import pytest
import torch

from vidforce.toy import metrics
from vidforce.toy.gmm import GMM
from vidforce.toy.progressive_train import RoundsConfig, train_progressive
from vidforce.toy.train import HarnessConfig, euler_sample, train_teacher


def test_rounds_halve_down_to_the_final_step_count():
    assert RoundsConfig().student_steps == [32, 16, 8, 4, 2, 1]
    assert RoundsConfig(teacher_steps=16, final_steps=2).student_steps == [8, 4, 2]
    for bad in ({"teacher_steps": 48}, {"teacher_steps": 4, "final_steps": 4}, {"final_steps": 0}):
        with pytest.raises(ValueError, match="RoundsConfig"):
            RoundsConfig(**bad)


def test_progressive_students_beat_the_teachers_euler_at_their_step_count():
    gmm = GMM.ring()
    h = HarnessConfig(teacher_steps=800, batch=256, width=64)
    teacher, _ = train_teacher(gmm, h)
    start = {k: p.clone() for k, p in teacher.state_dict().items()}
    students = train_progressive(teacher, gmm, h, RoundsConfig(teacher_steps=16, steps=150))
    assert list(students) == [8, 4, 2, 1]
    assert all(secs > 0 for _, secs in students.values())
    assert all(torch.equal(start[k], p) for k, p in teacher.state_dict().items())     # the teacher is frozen
    first = students[8][0].state_dict()
    assert any(not torch.equal(start[k], first[k]) for k in start)                    # the student trained

    g = torch.Generator().manual_seed(10)
    data, noise = gmm.sample(2000, g).float(), torch.randn(2000, 2, generator=g)
    ref = euler_sample(teacher, noise, 16)
    for n in (1, 2):
        x = euler_sample(students[n][0], noise, n)
        assert metrics.sliced_w2(x, data) < 0.6 * metrics.sliced_w2(euler_sample(teacher, noise, n), data), n
        rms = (x - ref).square().mean().sqrt()              # trajectory distillation keeps the coupling
        assert rms < 0.1 * (euler_sample(teacher, noise, n) - ref).square().mean().sqrt(), n
