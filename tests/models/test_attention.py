"""Attention backends: the math result, backend resolution and errors, forward-mode AD."""
import math
import sys
import types

import pytest
import torch

from vidforce.models import attention as A

CPU = torch.device("cpu")


def reference(q, k, v, mask=None):
    """``softmax(q k^T / sqrt(D)) v`` in float64."""
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def qkv(lq=5, lk=7, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = lambda n: (2, 3, n, d)  # noqa: E731
    return (torch.randn(shape(lq), generator=g, dtype=dtype), torch.randn(shape(lk), generator=g, dtype=dtype),
            torch.randn(shape(lk), generator=g, dtype=dtype))


@pytest.mark.parametrize("backend", ["math", "sdpa", "auto", "flex"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attend_matches_manual_softmax(backend, dtype):
    q, k, v = qkv(dtype=dtype)
    out = A.attend(q, k, v, backend)
    assert out.shape == q.shape and out.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert (out.double() - reference(q, k, v)).abs().max() < tol


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_attend_with_boolean_masks(backend):
    q, k, v = qkv(lq=6, lk=6, dtype=torch.float64)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    out = A.attend(q, k, v, backend, mask=causal)
    assert (out - reference(q, k, v, causal)).abs().max() < 1e-12
    assert torch.allclose(out[:, :, 0], v[:, :, 0])                 # row 0 sees key 0 only
    per_head = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(1)) > 0.4
    per_head[..., 0] = True                                         # no fully masked row
    out = A.attend(q, k, v, backend, mask=per_head)
    assert (out - reference(q, k, v, per_head)).abs().max() < 1e-12
    assert (out - A.attend(q, k, v, backend)).abs().max() > 1e-3   # the mask is not ignored


def test_resolve_on_cpu():
    assert A.resolve("auto", CPU) == "math"
    assert A.resolve("flex", CPU) == "math"
    assert A.resolve("math", CPU) == "math" and A.resolve("sdpa", CPU) == "sdpa"
    assert A.available(CPU) == ["math", "sdpa"]


@pytest.mark.parametrize("name", ["cudnn", "flash", "efficient", "flash_attn"])
def test_cuda_only_backend_on_cpu_raises(name):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        A.resolve(name, CPU)
    q, k, v = qkv()
    with pytest.raises(ValueError, match=name):
        A.attend(q, k, v, name)


def test_unknown_backend_names_the_field():
    with pytest.raises(ValueError, match="causal.attention"):
        A.resolve("fastest", CPU)
    q, k, v = qkv()
    with pytest.raises(ValueError, match="causal.attention"):
        A.attend(q, k, v, "fa3")
    with pytest.raises(ValueError, match="model.attn"):
        A.check_backend("nope", field="model.attn")


@pytest.fixture
def fresh_flash_attn():
    """``flash_attn_func`` looks the package up again (its lookup is cached), before and after the test."""
    A.flash_attn_func.cache_clear()
    yield
    A.flash_attn_func.cache_clear()


def test_flash_attn_missing_is_not_offered_and_names_the_package(monkeypatch, fresh_flash_attn):
    monkeypatch.setitem(sys.modules, "flash_attn", None)            # import flash_attn -> ImportError
    cuda = torch.device("cuda")
    assert A.flash_attn_func() is None
    assert A.available(cuda) == ["math", "sdpa", "cudnn", "flash", "efficient"]
    with pytest.raises(ValueError, match="flash_attn package is not importable"):
        A.resolve("flash_attn", cuda)
    assert A.resolve("auto", cuda) == "sdpa"                         # auto never needs it


def test_flash_attn_present_is_used(monkeypatch, fresh_flash_attn):
    def fake(q, k, v):
        return q
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=fake))
    cuda = torch.device("cuda")
    assert A.flash_attn_func() is fake
    assert A.available(cuda)[-1] == "flash_attn" and A.resolve("flash_attn", cuda) == "flash_attn"


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")   # torch's jvp set-up
def test_forward_mode_ad_through_math_backend():
    q, k, v = qkv(lq=4, lk=5, d=8, dtype=torch.float64)
    tq, tk, tv = qkv(lq=4, lk=5, d=8, dtype=torch.float64, seed=1)
    out, tangent = torch.func.jvp(lambda a, b, c: A.attend(a, b, c, "math"), (q, k, v), (tq, tk, tv))
    assert (out - reference(q, k, v)).abs().max() < 1e-12
    h = 1e-6                                                        # central difference of the reference
    fd = (reference(q + h * tq, k + h * tk, v + h * tv) - reference(q - h * tq, k - h * tk, v - h * tv)) / (2 * h)
    assert (tangent - fd).abs().max() < 1e-7
    assert tangent.abs().max() > 1e-2


def _rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_auto_runs_on_cuda_for_every_model_dtype(dtype):
    """``auto`` is the default of every model: it must run the dtypes a config can ask for (fp32 included)."""
    q, k, v = (t.to("cuda", dtype) for t in qkv(lq=64, lk=96, d=64))
    mask = torch.ones(64, 96, dtype=torch.bool, device="cuda").tril(diagonal=32)
    assert _rel_err(A.attend(q, k, v, "auto"), reference(q, k, v)) < 2e-2
    assert _rel_err(A.attend(q, k, v, "auto", mask=mask), reference(q, k, v, mask)) < 2e-2   # dense full sequence


@pytest.mark.gpu
def test_every_available_cuda_backend_matches_reference_in_bf16():
    dev = torch.device("cuda")
    q, k, v = (t.to(dev, torch.bfloat16) for t in qkv(lq=64, lk=96, d=128))
    for name in A.available(dev):
        assert _rel_err(A.attend(q, k, v, name), reference(q, k, v)) < 2e-2, name
