"""Generator EMA: copy before ``ema_start``, then ``ema <- d ema + (1 - d) p``; grouping; state dicts."""
from __future__ import annotations

import math

import torch
from torch import nn

from vidforce.train.ema import EMA, full_state_dict, param_groups


def test_copy_before_start_then_exponential_average():
    model = nn.Linear(3, 2)
    ema = EMA(decay=0.9, start=2, keep=True)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, step=0)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model, step=1)                                 # before start: a copy
    assert torch.equal(ema.shadow["weight"], torch.full((2, 3), 2.0))
    with torch.no_grad():
        model.weight.fill_(4.0)
    ema.update(model, step=2)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((2, 3), 0.9 * 2.0 + 0.1 * 4.0))
    assert ema.shadow["weight"].dtype == torch.float32


def test_non_keeping_ranks_hold_nothing_and_state_round_trips():
    model = nn.Linear(3, 2).to(torch.bfloat16)
    other = EMA(0.9, 0, keep=False)
    other.update(model, 0)
    assert other.shadow == {}
    ema = EMA(0.9, 0, keep=True)
    ema.update(model, 0)
    restored = EMA(0.9, 0, keep=True)
    restored.load_state_dict(ema.state_dict(), "cpu")
    assert restored.shadow.keys() == {"weight", "bias"}
    assert all(torch.equal(restored.shadow[k], ema.shadow[k]) for k in ema.shadow)
    assert restored.shadow["weight"].dtype == torch.float32


def test_param_groups_respect_the_bucket_and_full_state_dict_copies():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))   # 20 elements per layer
    groups = list(param_groups(model, bucket=20))
    assert [[n for n, _ in g] for g in groups] == [["0.weight", "0.bias"], ["1.weight", "1.bias"]]
    assert [len(g) for g in param_groups(model, bucket=1)] == [1, 1, 1, 1]
    full = full_state_dict(model, keep=True)
    assert full.keys() == model.state_dict().keys()
    full["0.weight"].zero_()
    assert model[0].weight.abs().sum() > 0                    # copies, not views
    assert full_state_dict(model, keep=False) == {}


def test_warmup_ema_after_n_updates_equals_the_closed_form():
    """Weights w_k = k at update k; with warm-up the average after n updates is
    sum_k p_k (1 - d_k) prod_{j > k} d_j with d_0 = 1 (the start copy), d_k = min(d, (1 + k - 1) / (10 + k - 1))."""
    model, decay, n = nn.Linear(1, 1, bias=False), 0.99, 30
    ema = EMA(decay, start=0, keep=True, warmup=True)
    for k in range(n + 1):
        with torch.no_grad():
            model.weight.fill_(float(k))
        ema.update(model, step=k)
    d = [1.0] + [min(decay, (1 + m) / (10 + m)) for m in range(n)]       # d[k]: the decay applied at update k
    weights = [(1 - d[k]) * math.prod(d[k + 1:]) if k else math.prod(d[1:]) for k in range(n + 1)]
    expected = sum(k * w for k, w in enumerate(weights))
    assert abs(sum(weights) - 1) < 1e-12
    assert abs(ema.shadow["weight"].item() - expected) < 1e-4 * expected
    assert weights[0] < 0.05 < decay ** n                                  # the start copy no longer dominates
    restored = EMA(decay, 0, keep=True, warmup=True)
    restored.load_state_dict(ema.state_dict(), "cpu")
    assert restored.updates == n
