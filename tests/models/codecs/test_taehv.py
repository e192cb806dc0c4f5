"""TAEHV (Wan 2.1 variant): the published key layout, WanVAE-compatible shapes, streaming = full decode, strict
loading with one-line errors naming the bad keys."""
import pytest
import torch
from safetensors.torch import save_file

from vidforce.models.codecs import Codec, TAEHV
from vidforce.models.codecs.taehv import TGrow, TPool, run_stream

from tests.models.codecs.helpers import checkpoint_round_trip

TINY = dict(latent_channels=4, encoder_dim=4, decoder_dims=(8, 8, 4, 4))


def tiny(**over) -> TAEHV:
    """A test-sized TAEHV whose signal survives its ReLUs (PyTorch's default init leaves them dead at this
    width) and whose output sits mid-range (not clamped)."""
    torch.manual_seed(0)
    codec = TAEHV(**{**TINY, **over}).eval()
    with torch.no_grad():
        for module in codec.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                module.weight.mul_(0.7)
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1)
        codec.decoder[-1].bias.fill_(0.5)
    return codec


def latents(frames, h=2, w=3, seed=2, channels=4):
    return torch.randn(1, frames, channels, h, w, generator=torch.Generator().manual_seed(seed))


def video(frames, height=16, width=24, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, height, width, generator=g) * 2 - 1


@torch.no_grad()
def test_shapes_match_the_wan_vae_latent():
    codec = tiny()
    assert isinstance(codec, Codec)
    assert (codec.spatial_factor, codec.temporal_factor) == (8, 4)
    assert TAEHV().latent_channels == 16
    z = codec.encode(video(9, batch=2))
    assert z.shape == (2, 3, 4, 2, 3)
    x = codec.decode(z)
    assert x.shape == (2, 9, 3, 16, 24) and x.abs().max() <= 1.0
    assert codec.decode(codec.encode(video(1))).shape == (1, 1, 3, 16, 24)
    with pytest.raises(ValueError, match="1 \\+ 4 k"):
        codec.encode(video(8))
    with pytest.raises(ValueError, match="latents must be"):
        codec.decode(torch.zeros(1, 2, 3, 2, 3))


@pytest.mark.parametrize("chunk", [1, 3])
@torch.no_grad()
def test_stream_decode_equals_full_decode(chunk):
    codec, z = tiny(), latents(9)
    full = codec.decode(z)
    decoder = codec.stream_decoder()
    parts = [decoder.decode(c) for c in z.split(chunk, dim=1)]
    assert [p.shape[1] for p in parts][:2] == [1 + 4 * (chunk - 1), 4 * chunk]
    # equal up to fp32 round-off (the convolutions run on batches of a different size)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=0, atol=1e-6)
    decoder.reset()
    torch.testing.assert_close(decoder.decode(z[:, :2]), full[:, :5], rtol=0, atol=1e-6)


@torch.no_grad()
def test_decoder_makes_four_frames_per_latent_and_a_stream_drops_its_first_three():
    codec, z = tiny(), latents(2)
    raw = codec.decode_chunk(z, {})
    assert raw.shape[1] == 8
    assert torch.equal(codec.decode(z), raw[:, 3:])


@torch.no_grad()
def test_encode_is_causal_and_pads_the_end_with_the_last_frame():
    codec, v = tiny(), video(9)
    assert torch.equal(codec.encode(v[:, :5])[:, 0], codec.encode(v)[:, 0])     # latent 0: frames 0-3
    padded = torch.cat([v[:, :5], v[:, 4:5].expand(-1, 3, -1, -1, -1), v[:, :1]], 1)
    assert torch.equal(codec.encode(v[:, :5])[:, 1], codec.encode(padded)[:, 1])  # latent 1: frame 4 four times


@torch.no_grad()
def test_memory_is_the_previous_frame_of_each_block():
    """Each MemBlock sees its own input one frame earlier: a change of latent frame 2 leaves frames before it
    untouched and changes the frames it grows into and later ones."""
    codec, z = tiny(), latents(4)
    other = z.clone()
    other[:, 2] += 1.0
    a, b = codec.decode(z), codec.decode(other)
    first = 1 + 4 * (2 - 1)                     # pixel frames of latents 0 and 1
    assert torch.equal(a[:, :first], b[:, :first])
    assert (a[:, first:first + 4] - b[:, first:first + 4]).abs().amax(dim=(0, 2, 3, 4)).min() > 0
    assert (a[:, first + 4:] - b[:, first + 4:]).abs().max() > 0


@torch.no_grad()
def test_tgrow_and_tpool_order_frames_by_channel_group():
    grow = TGrow(1, 2)
    grow.conv.weight.copy_(torch.tensor([1.0, 10.0]).view(2, 1, 1, 1))
    frames = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)                   # two frames of one channel
    assert grow(frames).flatten().tolist() == [1.0, 10.0, 2.0, 20.0]      # frame t -> frames 2t, 2t + 1
    pool = TPool(1, 2)
    pool.conv.weight.copy_(torch.tensor([1.0, 10.0]).view(1, 2, 1, 1))
    assert pool(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)).flatten().tolist() == [21.0, 43.0]
    with pytest.raises(ValueError, match="pools 2 frames"):
        run_stream(tiny().encoder, torch.zeros(1, 3, 3, 8, 8), {})


PUBLISHED_SHAPES = {
    "encoder.0.weight": (64, 3, 3, 3),
    "encoder.2.conv.weight": (64, 128, 1, 1),
    "encoder.3.weight": (64, 64, 3, 3),
    "encoder.4.conv.0.weight": (64, 128, 3, 3),
    "encoder.12.conv.weight": (64, 64, 1, 1),
    "encoder.17.weight": (16, 64, 3, 3),
    "decoder.1.weight": (256, 16, 3, 3),
    "decoder.3.conv.0.weight": (256, 512, 3, 3),
    "decoder.5.conv.4.bias": (256,),
    "decoder.7.conv.weight": (256, 256, 1, 1),
    "decoder.8.weight": (128, 256, 3, 3),
    "decoder.13.conv.weight": (256, 128, 1, 1),
    "decoder.14.weight": (64, 128, 3, 3),
    "decoder.17.conv.2.weight": (64, 64, 3, 3),
    "decoder.19.conv.weight": (128, 64, 1, 1),
    "decoder.20.weight": (64, 64, 3, 3),
    "decoder.22.weight": (3, 64, 3, 3),
    "decoder.22.bias": (3,),
}


def test_full_size_state_dict_has_the_published_taew2_1_layout():
    with torch.device("meta"):
        state = TAEHV().state_dict()
    assert len(state) == 128 and sum(k.startswith("decoder.") for k in state) == 64
    assert {k: tuple(state[k].shape) for k in PUBLISHED_SHAPES} == PUBLISHED_SHAPES
    assert not any(".skip." in k for k in state)                     # every MemBlock keeps its width
    assert not {"encoder.3.bias", "encoder.8.bias", "encoder.13.bias", "decoder.8.bias", "decoder.14.bias",
                "decoder.20.bias"} & set(state)                        # strided and projection convs: no bias


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@torch.no_grad()
def test_checkpoint_round_trip(tmp_path, suffix):
    codec = tiny()
    loaded = checkpoint_round_trip(codec, tmp_path / f"taew2_1{suffix}", **TINY)
    z = latents(2)
    torch.testing.assert_close(loaded.decode(z), codec.decode(z), rtol=0, atol=1e-6)


def test_checkpoint_mismatch_is_one_line_naming_the_keys(tmp_path):
    state = dict(tiny().state_dict())
    del state["decoder.22.bias"]
    state["decoder.23.weight"] = torch.zeros(1)
    state["decoder.7.conv.weight"] = torch.zeros(16, 8, 1, 1)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(ValueError) as error:
        TAEHV.from_checkpoint(path, **TINY)
    message = str(error.value)
    assert "\n" not in message and "bad.safetensors" in message
    assert "missing keys (1): decoder.22.bias" in message
    assert "unexpected keys (1): decoder.23.weight" in message
    assert "decoder.7.conv.weight (expected (8, 8, 1, 1), got (16, 8, 1, 1))" in message
    with pytest.raises(FileNotFoundError, match="TAEHV checkpoint not found"):
        TAEHV.from_checkpoint(tmp_path / "taew2_1.pth")


@torch.no_grad()
def test_bf16_runs_and_stays_close():
    z = latents(2)
    x32 = tiny().decode(z)
    x = tiny().to(torch.bfloat16).decode(z.bfloat16())
    assert x.dtype == torch.bfloat16 and (x.float() - x32).abs().max() < 0.1
