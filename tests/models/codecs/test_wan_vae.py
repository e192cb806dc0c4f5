import pytest
import torch
from safetensors.torch import save_file

from vidforce.models.codecs import Codec, WanVAE
from vidforce.models.codecs.wan_vae import WAN_LATENT_MEAN, WAN_LATENT_STD
from vidforce.models.codecs.wan_vae_blocks import Downsample, FeatureCache, Upsample

from tests.models.codecs.helpers import checkpoint_round_trip

MEAN = (0.5, -0.25, 0.0, 1.0)
STD = (2.0, 0.5, 1.0, 1.5)
TINY = dict(dim=8, z_dim=4, latent_mean=MEAN, latent_std=STD)


def tiny_vae(**over) -> WanVAE:
    torch.manual_seed(0)
    vae = WanVAE(**{**TINY, **over}).eval()
    with torch.no_grad():  # non-trivial norm scales, so a wrong gamma layout would show
        for name, param in vae.named_parameters():
            if name.endswith("gamma"):
                param.uniform_(0.5, 1.5)
    return vae


def video(frames, height=8, width=8, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, height, width, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


@torch.no_grad()
def test_shapes_and_frame_counts(vae):
    assert isinstance(vae, Codec)
    assert (vae.latent_channels, vae.spatial_factor, vae.temporal_factor) == (4, 8, 4)
    z = vae.encode(video(9, 16, 24, batch=2))
    assert z.shape == (2, 3, 4, 2, 3)
    x = vae.decode(z)
    assert x.shape == (2, 9, 3, 16, 24)
    assert x.abs().max() <= 1.0
    assert vae.num_frames(3) == 9 and vae.num_frames(1) == 1 and vae.num_latent_frames(9) == 3
    assert vae.decode(vae.encode(video(1))).shape == (1, 1, 3, 8, 8)


@pytest.mark.parametrize("chunk", [1, 3])
@torch.no_grad()
def test_stream_decode_equals_full_decode(vae, chunk):
    z = torch.randn(1, 6, 4, 1, 1, generator=torch.Generator().manual_seed(2))
    full = vae.decode(z)
    decoder = vae.stream_decoder()
    parts = [decoder.decode(c) for c in z.split(chunk, dim=1)]
    assert [p.shape[1] for p in parts][:2] == [1 + 4 * (chunk - 1), 4 * chunk]
    assert (torch.cat(parts, dim=1) - full).abs().max() <= 1e-5
    decoder.reset()
    assert (decoder.decode(z[:, :2]) - full[:, :5]).abs().max() <= 1e-5


@torch.no_grad()
def test_decoding_many_latent_frames_in_one_pass_equals_frame_by_frame(vae):
    z = torch.randn(1, 6, 4, 1, 1, generator=torch.Generator().manual_seed(3))
    full = vae.decode(z)
    cache = FeatureCache()
    one_pass = torch.cat([vae.decode_chunk(z[:, :4], cache), vae.decode_chunk(z[:, 4:], cache)], dim=1)
    assert (one_pass - full).abs().max() <= 1e-5


@torch.no_grad()
def test_stream_encode_equals_full_encode(vae):
    v = video(17)
    full = vae.encode(v)
    encoder = vae.stream_encoder()
    parts = [encoder.encode(v[:, :5]), encoder.encode(v[:, 5:13]), encoder.encode(v[:, 13:])]
    assert [p.shape[1] for p in parts] == [2, 2, 1]
    assert (torch.cat(parts, dim=1) - full).abs().max() <= 1e-5


@torch.no_grad()
def test_encode_and_decode_are_causal(vae):
    v = video(9)
    assert (vae.encode(v[:, :5]) - vae.encode(v)[:, :2]).abs().max() <= 1e-5
    z = vae.encode(v)
    assert (vae.decode(z[:, :2]) - vae.decode(z)[:, :5]).abs().max() <= 1e-5


def test_bad_inputs_raise_clear_errors(vae):
    with pytest.raises(ValueError, match="1 \\+ 4 k"):
        vae.encode(video(8))
    with pytest.raises(ValueError, match="divisible by 8"):
        vae.encode(video(5, 12, 8))
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 2, 3, 1, 1))
    encoder = vae.stream_encoder()
    with pytest.raises(ValueError, match="1 \\+ 4 k"):
        encoder.encode(video(4))
    encoder.encode(video(1))
    with pytest.raises(ValueError, match="multiple of 4"):
        encoder.encode(video(3))


@torch.no_grad()
def test_latent_normalisation_uses_per_channel_mean_and_std():
    plain = tiny_vae(latent_mean=(0.0,) * 4, latent_std=(1.0,) * 4)
    normed = tiny_vae()
    v = video(5)
    mean, std = torch.tensor(MEAN).view(1, 1, 4, 1, 1), torch.tensor(STD).view(1, 1, 4, 1, 1)
    torch.testing.assert_close(normed.encode(v), (plain.encode(v) - mean) / std)
    z = torch.randn(1, 2, 4, 1, 1)
    torch.testing.assert_close(normed.decode(z), plain.decode(z * std + mean))
    default = WanVAE(dim=8)
    assert default.latent_mean[:2] == (-0.7571, -0.7089) and default.latent_std[-2:] == (2.8251, 1.9160)
    assert len(WAN_LATENT_MEAN) == len(WAN_LATENT_STD) == 16


@torch.no_grad()
def test_temporal_downsample_keeps_frame_zero_then_mixes_triples():
    layer = Downsample(1, temporal=True)
    layer.resample[1].weight.zero_()
    layer.resample[1].weight[0, 0, 1, 1] = 1.0  # picks pixel (2i+1, 2j+1)
    layer.resample[1].bias.zero_()
    layer.time_conv.weight.zero_()
    layer.time_conv.weight[0, 0, :, 0, 0] = torch.tensor([1.0, 0.0, 10.0])
    layer.time_conv.bias.zero_()
    frames = torch.arange(1.0, 6.0).view(1, 1, 5, 1, 1).expand(1, 1, 5, 2, 2)
    expected = torch.tensor([1.0, 1 + 10 * 3, 3 + 10 * 5])
    assert torch.equal(layer(frames, FeatureCache()).flatten(), expected)
    cache = FeatureCache()
    streamed = torch.cat([layer(frames[:, :, :1], cache), layer(frames[:, :, 1:], cache)], dim=2)
    assert torch.equal(streamed.flatten(), expected)


@torch.no_grad()
def test_temporal_upsample_interleaves_channel_halves_after_frame_zero():
    layer = Upsample(2, temporal=True)
    layer.resample[1].weight.zero_()
    layer.resample[1].weight[0, 0, 1, 1] = 1.0  # output channel 0 = input channel 0
    layer.resample[1].bias.zero_()
    layer.time_conv.weight.zero_()
    layer.time_conv.weight[0, 0, 2, 0, 0] = 1.0  # first half: the current frame
    layer.time_conv.weight[2, 0, 1, 0, 0] = 2.0  # second half: twice the previous frame
    layer.time_conv.bias.zero_()
    frames = torch.zeros(1, 2, 3, 1, 1)
    frames[0, 0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0])
    out = layer(frames, FeatureCache())
    assert out.shape == (1, 1, 5, 2, 2)
    # frame 0 passes through; frame 1 sees zero history (previous = 0), frame 2 sees frame 1.
    assert torch.equal(out[0, 0, :, 0, 0], torch.tensor([1.0, 2.0, 0.0, 3.0, 4.0]))


OFFICIAL_SHAPES = {
    "encoder.conv1.weight": (96, 3, 3, 3, 3),
    "encoder.downsamples.0.residual.0.gamma": (96, 1, 1, 1),
    "encoder.downsamples.0.residual.2.weight": (96, 96, 3, 3, 3),
    "encoder.downsamples.0.residual.6.weight": (96, 96, 3, 3, 3),
    "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
    "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
    "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
    "encoder.downsamples.8.time_conv.weight": (384, 384, 3, 1, 1),
    "encoder.middle.1.norm.gamma": (384, 1, 1),
    "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
    "encoder.middle.2.residual.3.gamma": (384, 1, 1, 1),
    "encoder.head.0.gamma": (384, 1, 1, 1),
    "encoder.head.2.weight": (32, 384, 3, 3, 3),
    "conv1.weight": (32, 32, 1, 1, 1),
    "conv2.weight": (16, 16, 1, 1, 1),
    "decoder.conv1.weight": (384, 16, 3, 3, 3),
    "decoder.middle.1.proj.weight": (384, 384, 1, 1),
    "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
    "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
    "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
    "decoder.upsamples.7.time_conv.weight": (768, 384, 3, 1, 1),
    "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
    "decoder.upsamples.14.residual.6.weight": (96, 96, 3, 3, 3),
    "decoder.head.0.gamma": (96, 1, 1, 1),
    "decoder.head.2.weight": (3, 96, 3, 3, 3),
}


def test_full_size_state_dict_uses_official_names_and_shapes():
    with torch.device("meta"):
        state = WanVAE().state_dict()
    assert len(state) == 194
    assert {k: tuple(state[k].shape) for k in OFFICIAL_SHAPES} == OFFICIAL_SHAPES
    assert "decoder.upsamples.11.time_conv.weight" not in state  # the last upsample is 2D only
    assert not any(k.endswith("norm.bias") or ".residual.5." in k for k in state)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@torch.no_grad()
def test_checkpoint_round_trip(vae, tmp_path, suffix):
    loaded = checkpoint_round_trip(vae, tmp_path / f"vae{suffix}", **TINY)
    # identical weights; outputs agree to rounding (safetensors buffers may be aligned differently)
    v = video(5)
    torch.testing.assert_close(loaded.encode(v), vae.encode(v), rtol=0, atol=1e-5)
    z = torch.randn(1, 2, 4, 1, 1)
    torch.testing.assert_close(loaded.decode(z), vae.decode(z), rtol=0, atol=1e-5)


def test_checkpoint_mismatch_lists_every_bad_key(vae, tmp_path):
    state = dict(vae.state_dict())
    del state["decoder.head.2.bias"]
    state["encoder.extra.weight"] = torch.zeros(1)
    state["conv2.weight"] = torch.zeros(4, 4, 3, 1, 1)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(ValueError) as error:
        WanVAE.from_checkpoint(path, **TINY)
    message = str(error.value)
    assert "bad.safetensors" in message
    assert "missing keys (1): decoder.head.2.bias" in message
    assert "unexpected keys (1): encoder.extra.weight" in message
    assert "conv2.weight (expected (4, 4, 1, 1, 1), got (4, 4, 3, 1, 1))" in message


def test_checkpoint_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        WanVAE.from_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "vae.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="must end in"):
        WanVAE.from_checkpoint(tmp_path / "vae.ckpt")


@torch.no_grad()
def test_bf16_runs_and_stays_close(vae):
    v = video(5)
    z32 = vae.encode(v)
    bf16 = tiny_vae().to(torch.bfloat16)
    z = bf16.encode(v.bfloat16())
    assert z.dtype == torch.bfloat16 and (z.float() - z32).abs().max() < 0.1
    x = bf16.decode(z)
    assert x.dtype == torch.bfloat16 and torch.isfinite(x.float()).all()


def _stream(vae, z, chunk):
    decoder = vae.stream_decoder()
    return torch.cat([decoder.decode(c) for c in z.split(chunk, dim=1)], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_frame_buffer_decoder_is_bit_identical_to_the_concatenating_one(dtype):
    plain = tiny_vae().to(dtype)
    buffered = tiny_vae().to(dtype)
    buffered.set_decode_layout(buffers=True, channels_last_convs=False)
    z = torch.randn(1, 5, 4, 2, 2, generator=torch.Generator().manual_seed(4)).to(dtype)
    reference = _stream(plain, z, 3)
    for chunk in (3, 1):                                    # chunk 3: first chunks of 1 + 4 + 4 frames, then 8
        assert torch.equal(_stream(buffered, z, chunk), reference)
    decoder = buffered.stream_decoder()
    decoder.decode(z[:, :3])
    kinds = {type(v).__name__ for v in decoder.cache.values()}
    assert kinds == {"FrameBuffer"}                         # every causal conv with a history kept a buffer


@torch.no_grad()
def test_channels_last_decoder_equals_the_plain_one_to_fp32_round_off():
    plain, fast = tiny_vae(), tiny_vae()
    fast.set_decode_layout(buffers=True, channels_last_convs=True)
    z = torch.randn(1, 5, 4, 2, 2, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(_stream(fast, z, 3), _stream(plain, z, 3), rtol=0, atol=1e-5)
    decoder = fast.stream_decoder()
    decoder.decode(z[:, :3])
    assert all(b.data.is_contiguous(memory_format=torch.channels_last_3d) for b in decoder.cache.values())
