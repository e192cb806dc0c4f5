"""KD and Reflow on the harness (short runs): KD's one step learns the teacher's endpoints and beats its 1-step Euler;
a Reflow round beats the teacher's 1-step Euler; round k + 1 learns the couplings of round k's flow."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vidforce.objectives import trajectory as TD
from vidforce.toy import metrics, trajectory_train as TT
from vidforce.toy.gmm import GMM
from vidforce.toy.train import HarnessConfig, euler_sample, flow_of, train_teacher

H = HarnessConfig(steps=400, teacher_steps=800, batch=256, width=64)
C = TT.CouplingConfig(pairs=5000, ode_steps=128, rounds=2)


@pytest.fixture(scope="module")
def setup():
    gmm = GMM.ring()
    teacher, _ = train_teacher(gmm, H)
    teacher.requires_grad_(False)
    pool = TT.couplings(teacher, C.pairs, gmm.dim, C.ode_steps, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(10)
    data, noise = gmm.sample(2000, g).float(), torch.randn(2000, 2, generator=g)
    return gmm, teacher, pool, data, noise


def test_couplings_are_the_teachers_fine_euler_endpoints(setup):
    gmm, teacher, (eps, x0), _, _ = setup
    assert eps.shape == x0.shape == (C.pairs, gmm.dim)
    torch.testing.assert_close(x0[:100], euler_sample(teacher, eps[:100], C.ode_steps))
    assert (x0 - euler_sample(teacher, eps, 2 * C.ode_steps)).square().mean().sqrt() < 0.01     # a converged solve


def test_kd_learns_the_endpoints_and_beats_one_step_euler(setup):
    gmm, teacher, pool, data, noise = setup
    held_eps = noise[:500]
    held_x0 = euler_sample(teacher, held_eps, C.ode_steps)
    before = TD.kd_loss(flow_of(teacher), held_eps, held_x0).item()     # the student starts as the teacher
    net, secs = TT.train_kd(teacher, *pool, H)
    after = TD.kd_loss(flow_of(net), held_eps, held_x0).item()
    assert after < 0.1 * before and secs > 0, (before, after)
    one = metrics.sliced_w2(TT.kd_sample(net, noise), data)
    assert one < 0.3 * metrics.sliced_w2(euler_sample(teacher, noise, 1), data), one


def test_reflow_rounds_chain_their_couplings_and_beat_one_step_euler(setup, monkeypatch):
    gmm, teacher, pool, data, noise = setup
    made = []
    real = TT.couplings

    def spy(net, *args):
        made.append(net)
        return real(net, *args)
    monkeypatch.setattr(TT, "couplings", spy)
    rounds = TT.reflow_rounds(teacher, pool, H, C)
    assert len(rounds) == 2 and made == [rounds[0][0]]                # round 2 on round 1's couplings, made once
    euler1 = metrics.sliced_w2(euler_sample(teacher, noise, 1), data)
    for net, secs in rounds:
        assert net is not teacher and secs > 0
        assert metrics.sliced_w2(euler_sample(net, noise, 1), data) < 0.5 * euler1
    assert any(p.requires_grad for p in rounds[1][0].parameters()) and not any(p.requires_grad
                                                                               for p in teacher.parameters())


def test_table_tool_writes_every_row_and_verdict(tmp_path, monkeypatch, capsys):
    """tools/zoo_trajectory_table.py at toy lengths: the page holds the command, a row per objective and step count
    (KD 1; Reflow rounds 1 / 2 / 4; progressive 4 / 2 / 1), the guided table (teacher, stage-1 student, progressive
    from it) and one verdict line per method."""
    import importlib.util  # noqa: PLC0415
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("zoo_trajectory_table", root / "tools" / "zoo_trajectory_table.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "page.md"
    monkeypatch.setattr("sys.argv", ["zoo_trajectory_table.py", "--steps", "2", "--teacher-steps", "5", "--n", "64",
                                     "--pairs", "64", "--ode-steps", "4", "--rounds", "1", "--round-steps", "2",
                                     "--out", str(out)])
    assert tool.main() == 0
    text = out.read_text()
    assert "`python tools/zoo_trajectory_table.py --steps 2" in text
    main_table, guided = text.split("Guided distillation (two classes")

    def rows(part):
        return [line.split(" | ")[:2] for line in part.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows(main_table) == [["| teacher (Euler)", s] for s in ("1", "2", "4", "64")] + [["| kd", "1"]] + \
        [["| reflow round 1", s] for s in ("1", "2", "4")] + [["| progressive", s] for s in ("4", "2", "1")]
    assert rows(guided) == [["| teacher (guided Euler)", s] for s in ("1", "2", "4", "64")] + \
        [["| teacher (unguided Euler)", "64"]] + [["| guided student", s] for s in ("1", "2", "4", "64")] + \
        [["| guided + progressive", s] for s in ("4", "2", "1")]
    for method in ("- kd:", "- reflow round 1:", "- progressive:", "- guided + progressive:"):
        assert sum(line.startswith(method) for line in text.splitlines()) == 1, method
    capsys.readouterr()
