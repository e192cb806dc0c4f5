"""The adversarial harness: every objective trains (a few updates) with its schedule, the frozen feature networks
stay frozen, and the table tool writes its page."""
import copy
import importlib.util

import pytest
import torch

from vidforce.config import ObjectiveConfig
from vidforce.toy.adversarial_train import OBJECTIVES, Players, Run, default_inputs, train_student
from vidforce.toy.gmm import GMM
from vidforce.toy.nets import MLPDenoiser
from vidforce.toy.train import HarnessConfig, cm_sample
from tests.train.helpers import ROOT

H = HarnessConfig(steps=3, teacher_steps=0, batch=64, width=32, depth=3)


def _teacher():
    torch.manual_seed(0)
    return MLPDenoiser(2, H.width, H.depth)


@pytest.mark.parametrize("name", OBJECTIVES)
@pytest.mark.parametrize("steps", [1, 4])
def test_each_objective_trains_a_few_step_student(name, steps):
    teacher = _teacher()
    before = copy.deepcopy(teacher.state_dict())
    net, secs = train_student(Run(name, steps, default_inputs(name)), teacher, GMM.ring(), H)
    x = cm_sample(net, torch.randn(32, 2), steps, torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all() and secs > 0
    assert any(not torch.equal(a, b) for a, b in zip(net.state_dict().values(), before.values()))
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), before.values()))


def test_schedules_and_frozen_feature_networks():
    teacher, gmm, g = _teacher(), GMM.ring(), torch.Generator().manual_seed(0)
    dmd = Players(Run("dmd2", 2, True), teacher, gmm, H, ObjectiveConfig(), g)
    assert dmd.every == ObjectiveConfig().gen_update_every and len(dmd.disc.heads) == 1
    assert all(p.requires_grad for p in dmd.critic.parameters())                 # DMD2's head trains with its critic
    ladd = Players(Run("ladd", 2, False), teacher, gmm, H, ObjectiveConfig(), g)
    assert ladd.every == 1 and len(ladd.disc.heads) == H.depth
    assert not any(p.requires_grad for p in ladd.disc.backbone.parameters())
    frozen = copy.deepcopy(ladd.disc.backbone.state_dict())
    ladd.critic_loss().backward()
    assert all(p.grad is None for p in ladd.disc.backbone.parameters())
    assert all(torch.equal(a, b) for a, b in zip(ladd.disc.backbone.state_dict().values(), frozen.values()))
    with pytest.raises(ValueError, match="adversarial harness objective"):
        default_inputs("gan")


def test_table_tool_writes_its_page(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("zoo_adversarial_table", ROOT / "tools" / "zoo_adversarial_table.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "page.md"
    monkeypatch.setattr("sys.argv", ["zoo_adversarial_table.py", "--steps", "2", "--teacher-steps", "5", "--n", "64",
                                     "--objectives", "dmd", "dmd2", "--out", str(out)])
    assert tool.main() == 0
    text = out.read_text()
    assert text.startswith("# Distribution matching and adversarial")
    assert "`python tools/zoo_adversarial_table.py" in text
    assert "| dmd2 (noised data) | 4 | noised data |" in text and "backward simulation" in text
    capsys.readouterr()
