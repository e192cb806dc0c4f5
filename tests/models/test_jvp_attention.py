"""Fused attention + tangent: equal to ``torch.func.jvp`` of math attention (fp32) for every mask and shape.

The same tests run twice: in this process (CPU tensors without ``TRITON_INTERPRET``: the dense torch formulas)
and, through ``test_triton_kernel_under_the_interpreter``, in a subprocess with ``TRITON_INTERPRET=1`` set
before Triton is imported, where the Triton kernel itself runs (skipped when Triton is not installed).
"""
import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from tests.models.helpers import inputs, tiny_causal
from vidforce.models import attention as A
from vidforce.models import jvp_attention as J
from vidforce.models.causal import frame_mask

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch jvp
TOL = 1e-5                                                          # relative (norm) error, fp32

# name: (Lq, Lk, D, chunk, mask of the reference: "none" | "causal" | (frames, chunk_frames, tokens_per_frame))
CASES = {
    "none": (40, 40, 32, 0, "none"),
    "none-lq<lk": (9, 50, 32, 0, "none"),
    "causal-odd": (37, 37, 64, 1, "causal"),
    "causal-lq<lk": (13, 29, 64, 1, "causal"),                      # bottom-right: queries are the last keys
    "block-causal": (35, 35, 128, 14, (5, 2, 7)),                   # partial last chunk (5 frames, chunks of 2)
    "block-causal-cache": (20, 40, 64, 10, (8, 2, 5)),              # last 2 chunks of queries against all keys
    "head-dim-40": (19, 23, 40, 0, "none"),                         # head dim padded to a power of two
}


def reference_mask(lq, lk, kind):
    if kind == "none":
        return None
    if kind == "causal":
        return torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq)
    frames, chunk, tpf = kind                                       # BlockCausalPlan's dense token mask
    full = frame_mask(frames, chunk).repeat_interleave(tpf, 0).repeat_interleave(tpf, 1)
    assert full.shape == (lk, lk)
    return full[lk - lq:]


def math_jvp(primals, tangents, mask):
    def f(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with sdpa_kernel([SDPBackend.MATH]):
        return torch.func.jvp(f, primals, tangents)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def tensors(lq, lk, d, seed=0, b=2, h=3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, h, d, generator=g).transpose(1, 2)       # the model's layout: [B, L, H, D] transposed
    k, v = (torch.randn(b, h, lk, d, generator=g) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_and_tangent_equal_func_jvp_of_math(name):
    lq, lk, d, chunk, kind = CASES[name]
    primals, tangents = tensors(lq, lk, d), tensors(lq, lk, d, seed=1)
    assert J.triton_runs(primals[0]) == INTERPRET
    out, tangent = J.attention_with_tangent(*primals, *tangents, chunk=chunk)
    ref_out, ref_tangent = math_jvp(primals, tangents, reference_mask(lq, lk, kind))
    assert rel(out, ref_out) < TOL and rel(tangent, ref_tangent) < TOL
    assert ref_tangent.abs().max() > 1e-2


def test_half_precision_tracks_fp32():
    """fp16 operands, fp32 accumulation (the interpreter's bf16 dot is broken, so bf16 is checked by the bench)."""
    lq, lk, d, chunk, kind = CASES["block-causal-cache"]
    primals, tangents = tensors(lq, lk, d), tensors(lq, lk, d, seed=1)
    out, tangent = J.attention_with_tangent(*(t.half() for t in primals + tangents), chunk=chunk)
    ref_out, ref_tangent = math_jvp(primals, tangents, reference_mask(lq, lk, kind))
    assert out.dtype == tangent.dtype == torch.float16
    assert rel(out.float(), ref_out) < 3e-3 and rel(tangent.float(), ref_tangent) < 3e-3


def test_func_jvp_uses_the_function_and_matches_math():
    lq, lk, d, chunk, kind = CASES["block-causal"]
    primals, tangents = tensors(lq, lk, d), tensors(lq, lk, d, seed=1)
    out, tangent = torch.func.jvp(lambda q, k, v: J.jvp_attention(q, k, v, chunk=chunk), primals, tangents)
    ref_out, ref_tangent = math_jvp(primals, tangents, reference_mask(lq, lk, kind))
    assert rel(out, ref_out) < TOL and rel(tangent, ref_tangent) < TOL


@pytest.mark.parametrize("which", [0, 1, 2])
def test_forward_ad_with_one_tangent(which):
    """``forward_ad`` passes ``None`` for inputs without a tangent; the kernel skips those terms."""
    lq, lk, d, chunk, kind = CASES["causal-lq<lk"]
    primals, tangents = tensors(lq, lk, d), tensors(lq, lk, d, seed=1)
    only = tuple(t if i == which else torch.zeros_like(t) for i, t in enumerate(tangents))
    with torch.autograd.forward_ad.dual_level():
        args = list(primals)
        args[which] = torch.autograd.forward_ad.make_dual(primals[which], tangents[which])
        tangent = torch.autograd.forward_ad.unpack_dual(J.jvp_attention(*args, chunk=chunk)).tangent
    assert rel(tangent, math_jvp(primals, only, reference_mask(lq, lk, kind))[1]) < TOL


def test_backward_recomputes_with_sdpa():
    lq, lk, d, chunk, kind = CASES["block-causal-cache"]
    q, k, v = (t.clone().requires_grad_() for t in tensors(lq, lk, d))
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(J.jvp_attention(q, k, v, chunk=chunk), (q, k, v), grad)
    want = torch.autograd.grad(A.attend(q, k, v, "math", mask=reference_mask(lq, lk, kind)), (q, k, v), grad)
    assert all(rel(a, b) < TOL for a, b in zip(got, want))


def test_attend_jvp_backend_in_the_causal_model():
    """``CausalWan(attention="jvp")``: the JVP of a block-causal full-sequence forward equals the math backend's."""
    model = tiny_causal(frames_per_chunk=2)
    fused = copy.deepcopy(model)
    fused.attention = "jvp"
    x, t, ctx = inputs(model, batch=1, frames=4)
    dx = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    want = torch.func.jvp(lambda y: model.forward_full(y, t, ctx), (x,), (dx,))
    got = torch.func.jvp(lambda y: fused.forward_full(y, t, ctx), (x,), (dx,))
    assert rel(got[0], want[0]) < TOL and rel(got[1], want[1]) < TOL


def test_jvp_backend_resolves_everywhere_and_refuses_a_dense_mask():
    assert A.resolve("jvp", torch.device("cpu")) == "jvp"
    q, k, v = tensors(6, 6, 16)
    assert rel(A.attend(q, k, v, "jvp"), A.attend(q, k, v, "math")) < TOL
    with pytest.raises(ValueError, match="jvp backend takes no dense mask"):
        A.attend(q, k, v, "jvp", mask=torch.ones(6, 6, dtype=torch.bool))


def test_bad_shapes_and_masks_raise():
    q, k, v = tensors(8, 4, 16)
    with pytest.raises(ValueError, match="Lk >= Lq"):
        J.jvp_attention(q, k, v, chunk=1)
    with pytest.raises(ValueError, match="chunk must be >= 0"):
        J.attention_with_tangent(q, k, v, chunk=-1)
    with pytest.raises(ValueError, match=r"q \[B, H, Lq, D\]"):
        J.attention_with_tangent(q, k, v[..., :8])


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton; 286 MB wheel, not in CI)")
@pytest.mark.skipif(INTERPRET, reason="already running under TRITON_INTERPRET=1")
@pytest.mark.timeout(120)
def test_triton_kernel_under_the_interpreter():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))],
                         cwd=root, env=env, capture_output=True, text=True, timeout=110)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout
