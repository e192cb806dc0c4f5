"""3D RoPE: axis split, norm preservation, relative-position property, table bounds."""
import pytest
import torch

from vidforce.models.rope import Rope, apply_rope


@pytest.mark.parametrize("head_dim,split", [(128, (22, 21, 21)), (16, (4, 2, 2)), (12, (2, 2, 2))])
def test_axis_split(head_dim, split):
    rope = Rope(head_dim, max_len=32)
    assert rope.split == split
    assert [t.shape for t in rope.tables] == [(32, n) for n in split]


@pytest.mark.parametrize("head_dim", [128, 16])
def test_angles_shape_and_axis_dependence(head_dim):
    rope = Rope(head_dim, max_len=64)
    c0, c1, _ = rope.split
    frames = torch.tensor([5, 2, 9])
    cos, sin = rope.angles(frames, 3, 4)
    assert cos.shape == sin.shape == (3 * 3 * 4, head_dim // 2)
    ang = torch.atan2(sin, cos).view(3, 3, 4, -1)                # [F, h, w, pairs], frame-major tokens
    fa, ha, wa = ang[..., :c0], ang[..., c0:c0 + c1], ang[..., c0 + c1:]
    assert torch.allclose(fa, fa[:, :1, :1].expand_as(fa))       # frame pairs depend on the frame only
    assert torch.allclose(ha, ha[:1, :, :1].expand_as(ha))       # height pairs on the row only
    assert torch.allclose(wa, wa[:1, :1, :].expand_as(wa))       # width pairs on the column only
    # first pair of each axis rotates by exactly the position (frequency theta^0 = 1)
    assert torch.allclose(fa[:, 0, 0, 0], torch.atan2(torch.sin(frames.float()), torch.cos(frames.float())))
    assert torch.allclose(ha[0, :, 0, 0], torch.arange(3.0))
    assert torch.allclose(wa[0, 0, :, 0], torch.arange(4.0))


def test_frequencies_follow_each_axis_dim():
    rope = Rope(16, max_len=8, theta=10000.0)                    # frame axis: 4 pairs over an 8-dim axis
    expected = 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    assert torch.allclose(rope.tables[0][1], expected)
    assert torch.allclose(rope.tables[1][1], 10000.0 ** (-torch.arange(0, 4, 2, dtype=torch.float64) / 4))


def test_apply_rope_preserves_pair_norms_and_position_zero():
    rope = Rope(16, max_len=16)
    x = torch.randn(2, 3, 4 * 2 * 2, 16)
    cos, sin = rope.angles(torch.arange(3, 7), 2, 2)
    y = apply_rope(x, cos, sin)
    pair_norm = lambda t: t.unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    assert torch.allclose(pair_norm(y), pair_norm(x), atol=1e-5)
    assert not torch.allclose(y, x)
    c0, s0 = rope.angles(torch.zeros(1, dtype=torch.long), 1, 1)
    x1 = torch.randn(1, 1, 1, 16)
    assert torch.allclose(apply_rope(x1, c0, s0), x1)            # position (0, 0, 0): no rotation


def test_apply_rope_rotates_adjacent_pairs():
    cos = torch.tensor([[0.0, 1.0]])                             # pair 0 by 90 degrees, pair 1 not at all
    sin = torch.tensor([[1.0, 0.0]])
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])
    assert torch.allclose(apply_rope(x, cos, sin), torch.tensor([[[[-2.0, 1.0, 3.0, 4.0]]]]))


def test_apply_rope_keeps_dtype():
    rope = Rope(16, max_len=8)
    cos, sin = rope.angles(torch.arange(2), 1, 1)
    assert apply_rope(torch.randn(1, 1, 2, 16, dtype=torch.bfloat16), cos, sin).dtype == torch.bfloat16


@pytest.mark.parametrize("p,d", [(0, 3), (7, 5), (20, 11)])
def test_scores_depend_only_on_relative_frame_offset(p, d):
    rope = Rope(16, max_len=64)
    g = torch.Generator().manual_seed(p)
    q = torch.randn(1, 2, 4, 16, generator=g, dtype=torch.float64)   # one frame of a 2x2 grid
    k = torch.randn(1, 2, 4, 16, generator=g, dtype=torch.float64)

    def scores(q_frame, k_frame):
        qc, qs = rope.angles(torch.tensor([q_frame]), 2, 2)
        kc, ks = rope.angles(torch.tensor([k_frame]), 2, 2)
        qr = apply_rope(q, qc.double(), qs.double())
        kr = apply_rope(k, kc.double(), ks.double())
        return qr @ kr.transpose(-1, -2)

    shifted, base = scores(p + d, p), scores(d, 0)
    assert torch.allclose(shifted, base, atol=1e-5)
    assert not torch.allclose(scores(p + d + 1, p), base, atol=1e-3)   # the offset itself does matter


def test_past_the_table_raises_naming_relative_mode():
    rope = Rope(16, max_len=8)
    rope.angles(torch.tensor([7]), 2, 2)
    with pytest.raises(ValueError, match="rope_mode=relative"):
        rope.angles(torch.tensor([3, 8]), 2, 2)
    with pytest.raises(ValueError, match="larger than the RoPE table"):
        rope.angles(torch.tensor([0]), 9, 2)


def test_odd_head_dim_raises():
    with pytest.raises(ValueError, match="even"):
        Rope(15)
