"""LoRA over one shared base: zero adapters are the base, adapters off is the teacher exactly, only adapters train,
the merged weights reproduce the adapted model, activation checkpointing recomputes with the right adapter."""
from __future__ import annotations

import pytest
import torch

from vidforce.config import LORA_TARGETS
from vidforce.models.lora import SharedBase, lora_delta
from vidforce.models.wan import WanModel

from tests.models.helpers import inputs, tiny_causal

RANK = 4


def shared_of(seed: int = 0, roles=("generator", "critic"), targets=LORA_TARGETS) -> SharedBase:
    return SharedBase(tiny_causal(seed), roles, targets, RANK, alpha=8.0, dropout=0.0)


def randomise(shared: SharedBase, seed: int = 5) -> None:
    """Non-zero B (a trained adapter), a different draw per role."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in shared.adapters.values():
            for b in adapter.B.values():
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)


def test_zero_initialised_adapters_give_exactly_the_base_output():
    shared, plain = shared_of(), tiny_causal(0)
    x, t, ctx = inputs(plain, frames=6)
    with torch.no_grad():
        for role in ("generator", "critic"):
            view = shared.view(role)
            assert torch.equal(view(x, t, ctx), plain(x, t, ctx))
            assert torch.equal(view.forward_full(x, t, ctx), plain.forward_full(x, t, ctx))


def test_teacher_is_the_base_with_adapters_off_and_equals_the_plain_bidirectional_model_exactly():
    shared = shared_of()
    randomise(shared)
    torch.manual_seed(0)
    teacher = WanModel(shared.base.arch, attention="math").eval()     # same seed: the base's weights
    x, t, ctx = inputs(teacher, frames=6)
    with torch.no_grad():
        adapted = shared.view("critic")(x, t, ctx)
        assert not torch.equal(adapted, teacher(x, t, ctx))           # the adapter does something ...
        assert torch.equal(shared.base(x, t, ctx), teacher(x, t, ctx))  # ... and is off outside its view


def test_views_hold_only_their_adapter_and_the_base_is_held_once():
    shared = shared_of()
    gen, critic = shared.view("generator"), shared.view("critic")
    base_ids = {id(p) for p in shared.base.parameters()}
    for view in (gen, critic):
        names = [n for n, _ in view.named_parameters()]
        assert names and all(n.startswith(("adapter.A.", "adapter.B.")) for n in names)
        assert not base_ids & {id(p) for p in view.parameters()}
    assert not {id(p) for p in gen.parameters()} & {id(p) for p in critic.parameters()}
    a = gen.adapter.A["blocks-0-self_attn-q"]
    assert a.shape == (RANK, shared.base.arch.dim)
    assert len(gen.adapter.A) == len(LORA_TARGETS) * shared.base.arch.num_layers
    assert gen.frames_per_chunk == shared.base.frames_per_chunk and gen.arch is shared.base.arch


def test_optimizer_steps_change_only_adapter_parameters():
    shared = shared_of()
    view = shared.view("generator").train()
    before = {n: p.detach().clone() for n, p in shared.base.named_parameters()}
    adapters = {n: p.detach().clone() for n, p in view.named_parameters()}
    opt = torch.optim.AdamW(view.parameters(), lr=1e-2, weight_decay=0.01)
    x, t, ctx = inputs(shared.base, frames=6)
    for _ in range(3):
        opt.zero_grad()
        view.forward_full(x, t, ctx).square().mean().backward()
        opt.step()
    for n, p in shared.base.named_parameters():
        assert p.grad is None and not p.requires_grad
        assert p.detach().numpy().tobytes() == before[n].numpy().tobytes(), n
    changed = [n for n, p in view.named_parameters() if not torch.equal(p, adapters[n])]
    assert any(".B." in n for n in changed) and any(".A." in n for n in changed)


def test_merged_weights_reproduce_the_adapted_model():
    """fp32, CPU: the merged linear (W + s B A) vs base + adapter differ by rounding only (atol 1e-5)."""
    shared = shared_of()
    randomise(shared)
    merged = tiny_causal(1)
    merged.load_state_dict(shared.view("generator").merged_state_dict(), strict=True)
    x, t, ctx = inputs(merged, frames=6)
    with torch.no_grad():
        want = shared.view("generator").forward_full(x, t, ctx)
        got = merged.forward_full(x, t, ctx)
        base = shared.base.forward_full(x, t, ctx)
    assert (want - base).abs().max() > 1e-2                 # the adapter matters at this scale
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_merged_weights_from_an_ema_dict_use_its_values():
    shared = shared_of()
    view = shared.view("generator")
    ema = {n: torch.full_like(p, 0.1) for n, p in view.named_parameters()}
    merged = view.merged_state_dict(ema)
    w = shared.base.blocks[0].ffn[0].weight
    torch.testing.assert_close(merged["blocks.0.ffn.0.weight"], w + 2.0 * 0.01 * RANK)   # scale 8/4, (B A)_ij = r/100
    assert torch.equal(merged["blocks.0.norm3.weight"], shared.base.blocks[0].norm3.weight)


def test_activation_checkpointing_recomputes_with_the_adapter_of_the_forward():
    """The critic turn's pattern: forward with grad (checkpointed), another role's call, then backward."""
    grads = []
    for checkpointing in (False, True):
        shared = shared_of()
        randomise(shared)
        shared.base.gradient_checkpointing = checkpointing
        gen, critic = shared.view("generator"), shared.view("critic")
        x, t, ctx = inputs(shared.base, frames=6)
        loss = critic(x, t, ctx).square().mean()
        with torch.no_grad():
            gen.forward_full(x, t, ctx)                     # another adapter runs before the backward
            shared.base(x, t, ctx)
        loss.backward()
        assert all(p.grad is None for p in gen.parameters())
        grads.append({n: p.grad.clone() for n, p in critic.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)


def test_chunk_rollout_with_the_cache_runs_in_the_role():
    shared = shared_of()
    randomise(shared)
    view = shared.view("generator")
    x, t, ctx = inputs(shared.base, batch=1, frames=6)
    with torch.no_grad():
        kv = view.text_kv(ctx)
        cache = view.new_cache(1, 4, 4, 6, "cpu", torch.float32)
        chunks = [view.forward_chunk(x[:, s:s + 3], t[:, s:s + 3], cache, s, True, text_kv=kv) for s in (0, 3)]
        full = view.forward_full(x, t, ctx)
    torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=1e-5, atol=1e-5)


def test_targets_select_linears_and_an_unknown_layer_matches_nothing():
    shared = shared_of(targets=("ffn.0",))
    assert shared.targets == [f"blocks.{i}.ffn.0" for i in range(shared.base.arch.num_layers)]
    with pytest.raises(ValueError, match="lora.target_modules"):
        shared_of(targets=("nope",))


def test_the_adapter_delta_equals_peft_lora():
    """Cross-check of the LoRA convention (scale alpha / r, A then B) against peft's LoRA on the same weights."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 24))
    x = torch.randn(3, 16)
    base = net(x)
    peft.inject_adapter_in_model(peft.LoraConfig(r=RANK, lora_alpha=8, target_modules=["0"]), net)
    with torch.no_grad():
        net[0].lora_B["default"].weight.normal_()
    a, b = net[0].lora_A["default"].weight, net[0].lora_B["default"].weight
    torch.testing.assert_close(base + lora_delta(x, a, b, 8 / RANK), net(x))
