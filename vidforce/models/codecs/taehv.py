"""TAEHV, the tiny autoencoder of Hunyuan / Wan video latents (Wan 2.1 variant), as a vidforce codec.

State-dict compatible with the published `taew2_1.pth` (madebyollin/taehv): the keys are the indices of two
`nn.Sequential`, `encoder.*` and `decoder.*` (`decoder.3.conv.0.weight`, `decoder.7.conv.weight`, ...).
It works in WanVAE's latent space with no scale or shift of its own (TAEHV encodes and decodes the latents
the diffusion model sees, i.e. vidforce's normalised latents): 16 channels, 8x in space, 4x in time,
`1 + 4 (T - 1)` frames from `T` latents. Pixels are [-1, 1] outside, [0, 1] inside (TAEHV's range).

Layers run per frame (2D convolutions on `[B * T, C, H, W]`); time enters in three ways:
- `MemBlock`: `relu(conv(cat[x_t, x_{t-1}]) + skip(x_t))`, with `x_{-1} = 0` at the start of a stream;
- `TPool(s)` (encoder): `s` consecutive frames packed into channels, then a 1x1 conv (time / s);
- `TGrow(s)` (decoder): a 1x1 conv to `s` times the channels, unpacked into `s` frames (time x s).
Layout: encoder `conv ReLU | TPool(2) conv/2 MemBlock x3 | TPool(2) conv/2 MemBlock x3 | TPool(1) conv/2
MemBlock x3 | conv`; decoder `Clamp conv ReLU | MemBlock x3 up2 TGrow(1) conv | MemBlock x3 up2 TGrow(2)
conv | MemBlock x3 up2 TGrow(2) conv | ReLU conv`. The decoder makes `4 T` frames and drops the first 3 of a
stream; the encoder pads a video at its end to a multiple of 4 frames with copies of its last frame.

Streaming keeps, per MemBlock, the last frame it saw: chunk by chunk decoding equals decoding at once.
"""
import torch
import torch.nn.functional as F
from torch import nn

from vidforce.models.codecs.base import Codec, StreamDecoder
from vidforce.models.codecs.checkpoint import load_strict

Memory = dict[int, torch.Tensor]          # layer index -> its last input frame [B, 1, C, H, W]


def conv3(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3): `3 tanh(x / 3)`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """`relu(conv(cat[x, past]) + skip(x))` on frames `[N, C, H, W]`, `past` the previous frame of each."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(conv3(2 * n_in, n_out), nn.ReLU(), conv3(n_out, n_out), nn.ReLU(),
                                  conv3(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TPool(nn.Module):
    """`[B * T, C, H, W]` -> `[B * T / s, C, H, W]`: frames `s t .. s t + s - 1` side by side in channels."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(dim * stride, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.reshape(-1, self.stride * x.shape[1], *x.shape[2:]))


class TGrow(nn.Module):
    """`[B * T, C, H, W]` -> `[B * T s, C, H, W]`: channel group `i` of frame `t` becomes frame `s t + i`."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(dim, dim * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).reshape(-1, *x.shape[1:])


def run_stream(layers: nn.Sequential, x: torch.Tensor, memory: Memory) -> torch.Tensor:
    """Next chunk `x [B, T, C, H, W]` of a stream through `layers` -> `[B, T', C', H', W']`.

    `memory` (updated) holds each MemBlock's last input frame; a TPool needs a chunk whose frame count at
    its input is a multiple of its stride.
    """
    batch = x.shape[0]
    h = x.flatten(0, 1)
    for index, layer in enumerate(layers):
        if isinstance(layer, MemBlock):
            frames = h.unflatten(0, (batch, -1))
            past = memory.get(index, torch.zeros_like(frames[:, :1]))
            memory[index] = frames[:, -1:].clone()
            h = layer(h, torch.cat([past, frames[:, :-1]], 1).flatten(0, 1))
        elif isinstance(layer, TPool) and (h.shape[0] // batch) % layer.stride:
            raise ValueError(f"TAEHV layer {index} pools {layer.stride} frames; got a chunk of {h.shape[0] // batch}")
        else:
            h = layer(h)
    return h.unflatten(0, (batch, -1))


class TAEHV(Codec, nn.Module):
    """TAEHV for Wan 2.1 (defaults: the published `taew2_1.pth`); small widths build test-sized ones.

    Args: `latent_channels`; `encoder_dim` width of the encoder; `decoder_dims` widths of the decoder's
    three stages and of its output block.
    """

    spatial_factor = 8
    temporal_factor = 4
    trimmed_frames = 3      # frames the decoder makes before the first one a WanVAE would

    def __init__(self, latent_channels: int = 16, encoder_dim: int = 64, decoder_dims=(256, 128, 64, 64)):
        nn.Module.__init__(self)
        if len(decoder_dims) != 4:
            raise ValueError(f"decoder_dims needs 4 widths, got {tuple(decoder_dims)}")
        self.arch = dict(latent_channels=latent_channels, encoder_dim=encoder_dim, decoder_dims=tuple(decoder_dims))
        self.latent_channels = latent_channels
        e, d = encoder_dim, decoder_dims
        encoder = [conv3(3, e), nn.ReLU()]
        for stride in (2, 2, 1):
            encoder += [TPool(e, stride), conv3(e, e, stride=2, bias=False), *(MemBlock(e, e) for _ in range(3))]
        self.encoder = nn.Sequential(*encoder, conv3(e, latent_channels))
        decoder = [Clamp(), conv3(latent_channels, d[0]), nn.ReLU()]
        for stage, stride in enumerate((1, 2, 2)):
            decoder += [*(MemBlock(d[stage], d[stage]) for _ in range(3)), nn.Upsample(scale_factor=2),
                        TGrow(d[stage], stride), conv3(d[stage], d[stage + 1], bias=False)]
        self.decoder = nn.Sequential(*decoder, nn.ReLU(), conv3(d[3], 3))

    @classmethod
    def from_checkpoint(cls, path, device="cpu", dtype: torch.dtype = torch.float32, **arch) -> "TAEHV":
        """Load `taew2_1.pth` (or a `.safetensors` with its keys) strictly; frozen, eval mode. Raises
        FileNotFoundError for a missing file, a one-line ValueError naming missing / unexpected / wrong-shape
        keys."""
        return load_strict(cls, path, "TAEHV", device, dtype, **arch)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video `[B, 1 + 4 k, 3, H, W]` in [-1, 1] -> latents `[B, 1 + k, C, H/8, W/8]`, 4 frames at a time."""
        self.check_video(video)
        self.num_latent_frames(video.shape[1])                 # raises unless 1 + 4 k frames
        f = self.temporal_factor
        pad = -video.shape[1] % f
        x = torch.cat([video, video[:, -1:].expand(-1, pad, -1, -1, -1)], 1) if pad else video
        x = (x.to(self.encoder[0].weight.dtype) + 1) / 2
        memory: Memory = {}
        return torch.cat([run_stream(self.encoder, c, memory) for c in x.split(f, dim=1)], 1).to(video.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `[B, T, C, h, w]` -> video `[B, 1 + 4 (T - 1), 3, 8 h, 8 w]` in [-1, 1]."""
        return self.stream_decoder().decode(latents)

    def decode_chunk(self, latents: torch.Tensor, memory: Memory) -> torch.Tensor:
        """Next latent chunk `[B, t, C, h, w]` -> its `4 t` raw frames `[B, 4 t, 3, H, W]` in [-1, 1]."""
        x = run_stream(self.decoder, latents.to(self.decoder[1].weight.dtype), memory)
        return (x.clamp(0, 1) * 2 - 1).to(latents.dtype)

    def stream_decoder(self) -> "TAEHVStreamDecoder":
        return TAEHVStreamDecoder(self)


class TAEHVStreamDecoder(StreamDecoder):
    """Decodes consecutive latent chunks of one video (all frames of a chunk at once); equals
    `TAEHV.decode` of their concatenation."""

    def __init__(self, codec: TAEHV):
        self.codec = codec
        self.memory: Memory = {}
        self.started = False

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """`[B, t, C, h, w]` -> `[B, tv, 3, H, W]` in [-1, 1] (`tv = 4 t`, 3 fewer for a stream's first chunk)."""
        self.codec.check_latents(latents)
        frames = self.codec.decode_chunk(latents, self.memory)
        trim = 0 if self.started else self.codec.trimmed_frames
        self.started = True
        return frames[:, trim:]

    def reset(self) -> None:
        self.memory = {}
        self.started = False
