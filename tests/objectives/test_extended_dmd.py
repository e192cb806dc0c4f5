"""Self-Forcing++ extended DMD: grad only in the window; the no_grad prefix holds no activations."""
import pytest
import torch

from vidforce import config
from vidforce.models.causal import CausalWan
from vidforce.models.graphs import GraphedChunks
from vidforce.models.wan import WanModel
from vidforce.objectives import Batch, Nets, StepContext, build
from vidforce.objectives.base import generate
from vidforce.rollout import RolloutPlan
from vidforce.sampling import Sampler

K = 6


def _setup(window_start: int, num_frames: int, graphs: bool = False):
    cfg = config.load(None, ["objective.name=extended_dmd", f"rollout.num_frames={K}", "rollout.long_frames=30",
                             "causal.window=6", "causal.sink=3", "causal.rope_mode=relative",
                             "schedule.denoising_steps=[1000,500]"])
    arch = config.arch_of(cfg.model)
    torch.manual_seed(0)
    gen = CausalWan(arch, 3, 6, 3, "relative", "math")
    teacher, critic = WanModel(arch, "math").requires_grad_(False), WanModel(arch, "math").requires_grad_(False)
    text = torch.randn(1, arch.text_len, arch.text_dim)
    ctx = StepContext(Nets(gen, critic, teacher), Batch(text, text), RolloutPlan(1, num_frames, window_start),
                      Sampler.from_config(cfg.schedule), cfg, torch.Generator().manual_seed(0), (arch.in_dim, 4, 4),
                      runner=GraphedChunks(gen, capture=False) if graphs else None)
    return build(cfg), ctx


def _saved_bytes(fn) -> int:
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_gradients_only_on_window_chunks():
    objective, ctx = _setup(window_start=12, num_frames=18)
    gen = ctx.nets.generator
    calls = []
    orig = gen.forward_chunk

    def spy(x, t, cache, start, write, **kw):
        calls.append((start, torch.is_grad_enabled()))
        return orig(x, t, cache, start, write, **kw)
    gen.forward_chunk = spy
    loss, _ = objective.generator_loss(ctx)
    loss.backward()
    assert {s for s, g in calls if g} == {12, 15}
    assert max(s for s, _ in calls) == 15                   # stops at the window's end
    assert all(p.grad is not None for p in gen.parameters() if p.requires_grad)


def test_prefix_memory_is_flat_in_rollout_length():
    """Bytes saved for backward are the same for N = 2x, 3x and 5x K: the no_grad prefix saves nothing.

    (N = 1x K saves slightly less: its window starts at frame 0, so there are no cached keys to attend.)
    """
    saved = []
    for n in (12, 18, 30):
        objective, ctx = _setup(n - K, n)
        saved.append(_saved_bytes(lambda: objective.generator_loss(ctx)))
    assert saved[0] > 0 and saved[0] == saved[1] == saved[2]


def test_needs_a_rolling_window():
    with pytest.raises(ValueError, match="causal.window"):
        build(config.load(None, ["objective.name=extended_dmd", "rollout.num_frames=6", "rollout.long_frames=12"]))


@pytest.mark.parametrize("grad", [False, True])
def test_graph_runner_rollout_is_bit_identical(grad):
    """``rollout.cuda_graphs`` on CPU (static buffers, eager): the window and, with grad, every parameter gradient
    equal the plain rollout's bit for bit; a second rollout (a new stream on the reset cache) reuses the graphs."""
    def run(graphs):
        _, ctx = _setup(window_start=12, num_frames=18, graphs=graphs)
        x = generate(ctx, grad)
        if grad:
            (x * torch.linspace(-1, 1, x.numel()).view_as(x)).sum().backward()
        return x.detach(), [p.grad for p in ctx.nets.generator.parameters()], ctx
    plain, plain_grads, _ = run(False)
    graphed, grads, ctx = run(True)
    assert torch.equal(graphed, plain)
    assert all(a is None and b is None or torch.equal(a, b) for a, b in zip(grads, plain_grads))
    assert (plain_grads[0] is not None) == grad
    keys = set(ctx.runner.graphs)
    assert keys
    ctx.cache.clear()
    ctx.rng.manual_seed(0)
    with torch.no_grad():
        again = generate(ctx, grad)
    assert set(ctx.runner.graphs) == keys
    assert torch.equal(again, plain)


@pytest.mark.gpu
def test_captured_graph_rollout_matches_the_plain_rollout():
    """On a GPU the replayed no_grad forwards give the plain rollout's window (equal to round-off of the kernels)."""
    outs = []
    for graphs in (False, True):
        _, ctx = _setup(window_start=12, num_frames=18)
        ctx.nets.generator.cuda()
        ctx.batch = Batch(ctx.batch.cond.cuda(), ctx.batch.uncond.cuda())
        ctx.rng = torch.Generator("cuda").manual_seed(0)
        ctx.runner = GraphedChunks(ctx.nets.generator, capture=True) if graphs else None
        outs.append(generate(ctx, grad=False))
        if graphs:
            assert ctx.runner.graphs and all(g.graph is not None for g in ctx.runner.graphs.values())
    torch.testing.assert_close(outs[1], outs[0])


def test_cuda_graphs_need_a_rolling_window_and_detached_cache():
    base = ["objective.name=extended_dmd", "rollout.num_frames=6", "rollout.long_frames=12", "rollout.cuda_graphs=true"]
    for extra in ([], ["causal.window=6", "rollout.cache_grad=exit_step"]):
        with pytest.raises(ValueError, match="rollout.cuda_graphs needs a rolling causal.window"):
            config.load(None, base + extra)
    assert config.load(None, base + ["causal.window=6"]).rollout.cuda_graphs
