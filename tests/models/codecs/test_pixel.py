import pytest
import torch

from vidforce.models.codecs import Codec, PixelCodec


def video(frames=5, height=8, width=12, batch=2):
    return torch.rand(batch, frames, 3, height, width) * 2 - 1


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_round_trip_is_exact_and_shapes_follow_the_factor(factor):
    codec = PixelCodec(spatial_factor=factor)
    assert isinstance(codec, Codec)
    v = video()
    z = codec.encode(v)
    assert z.shape == (2, 5, 3 * factor * factor, 8 // factor, 12 // factor)
    assert codec.latent_channels == z.shape[2] and codec.temporal_factor == 1
    assert torch.equal(codec.decode(z), v)
    assert codec.num_frames(5) == 5


def test_channel_order_is_colour_then_patch_row_then_column():
    v = torch.arange(3 * 4 * 4, dtype=torch.float32).view(1, 1, 3, 4, 4)
    z = PixelCodec(spatial_factor=2).encode(v)
    # latents[c*4 + dy*2 + dx, i, j] = video[c, 2i + dy, 2j + dx]
    assert z[0, 0, 1 * 4 + 1 * 2 + 0, 1, 0] == v[0, 0, 1, 3, 0]
    assert z[0, 0, 2 * 4 + 0 * 2 + 1, 0, 1] == v[0, 0, 2, 0, 3]


def test_scale_multiplies_latents_and_is_divided_out():
    v = video()
    plain, scaled = PixelCodec(spatial_factor=2), PixelCodec(spatial_factor=2, scale=2.0)
    assert torch.equal(scaled.encode(v), 2.0 * plain.encode(v))
    assert torch.equal(scaled.decode(scaled.encode(v)), v)


def test_decode_clamps_to_pixel_range():
    codec = PixelCodec(spatial_factor=2)
    z = torch.full((1, 1, 12, 2, 2), 3.0)
    assert codec.decode(z).max() == 1.0 and codec.decode(-z).min() == -1.0


def test_stream_decode_equals_full_decode():
    codec = PixelCodec(spatial_factor=2)
    z = torch.randn(1, 7, 12, 3, 3)
    decoder = codec.stream_decoder()
    streamed = torch.cat([decoder.decode(c) for c in z.split(3, dim=1)], dim=1)
    decoder.reset()
    assert torch.equal(streamed, codec.decode(z))


def test_bad_sizes_raise_value_error():
    codec = PixelCodec(spatial_factor=4)
    with pytest.raises(ValueError, match="divisible by 4, got H=8, W=10"):
        codec.encode(video(height=8, width=10))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        codec.encode(torch.zeros(1, 2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, T, 48, h, w\]"):
        codec.decode(torch.zeros(1, 2, 12, 2, 2))
    with pytest.raises(ValueError, match="spatial_factor"):
        PixelCodec(spatial_factor=0)
