"""Wan2.1 video VAE as a vidforce codec: state-dict compatible with `Wan2.1_VAE.pth`.

Compression: 8x in space, 4x in time, causal: `1 + 4k` pixel frames <-> `1 + k` latent frames of
`z_dim = 16` channels. Latents are normalised per channel, `z = (mu - mean) / std`, with the
official Wan2.1 constants. Top-level keys: `encoder.*`, `conv1.*` (encoder output -> mean and
log-variance), `conv2.*` (latent -> decoder input), `decoder.*`.

Encoding runs the official chunking (1 frame, then chunks of 4) through a feature cache, so memory
does not grow with video length; decoding runs one latent frame at a time the same way. A
`WanStreamDecoder` decodes any chunking of the latents with the same result.
"""
import torch
from torch import nn

from vidforce.models.codecs.base import Codec, StreamDecoder
from vidforce.models.codecs.checkpoint import load_strict
from vidforce.models.codecs.wan_vae_blocks import (CausalConv3d, Decoder3d, Encoder3d, FeatureCache, channels_last,
                                                   memory_format_of)

WAN_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


class WanVAE(Codec, nn.Module):
    """The Wan2.1 VAE (defaults: the released 1.3B / 14B VAE). Small `dim` builds test-sized ones.

    Args: `dim` base channels; `z_dim` latent channels; `dim_mult` channel multiplier per stage;
    `num_res_blocks` per encoder stage (decoder: one more); `temperal_downsample` which encoder stage
    transitions also halve time (the decoder mirrors it); `latent_mean` / `latent_std` per channel.
    """

    def __init__(
        self,
        dim: int = 96,
        z_dim: int = 16,
        dim_mult=(1, 2, 4, 4),
        num_res_blocks: int = 2,
        temperal_downsample=(False, True, True),
        latent_mean=WAN_LATENT_MEAN,
        latent_std=WAN_LATENT_STD,
    ):
        nn.Module.__init__(self)
        if len(temperal_downsample) != len(dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample needs {len(dim_mult) - 1} entries (one per stage transition), "
                f"got {len(temperal_downsample)}"
            )
        if len(latent_mean) != z_dim or len(latent_std) != z_dim:
            raise ValueError(f"latent_mean and latent_std need z_dim={z_dim} entries each")
        self.arch = dict(dim=dim, z_dim=z_dim, dim_mult=tuple(dim_mult), num_res_blocks=num_res_blocks,
                         temperal_downsample=tuple(temperal_downsample))
        self.latent_channels = z_dim
        self.spatial_factor = 2 ** (len(dim_mult) - 1)
        self.temporal_factor = 2 ** sum(bool(t) for t in temperal_downsample)
        self.latent_mean = tuple(float(m) for m in latent_mean)
        self.latent_std = tuple(float(s) for s in latent_std)
        self._stat_tensors: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}   # (device, dtype) -> (mean, std)
        self.encoder = Encoder3d(dim, 2 * z_dim, dim_mult, num_res_blocks, temperal_downsample)
        self.conv1 = CausalConv3d(2 * z_dim, 2 * z_dim, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, tuple(reversed(temperal_downsample)))
        self.decode_buffers = False     # stream decoders keep FrameBuffers (set_decode_layout)

    def set_decode_layout(self, buffers: bool, channels_last_convs: bool) -> None:
        """How decoding runs; the frames are the same. `buffers`: causal convs of a stream decoder keep their
        past in preallocated padded buffers (bit-identical); `channels_last_convs`: the decoder's convolutions in
        NDHWC / NHWC, cuDNN's fast layout (equal to fp32 round-off; not undone by False)."""
        self.decode_buffers = buffers
        if channels_last_convs:
            channels_last(self.decoder)

    @classmethod
    def from_checkpoint(cls, path, device="cpu", dtype: torch.dtype = torch.float32, **arch) -> "WanVAE":
        """Load `Wan2.1_VAE.pth` (or a `.safetensors` with the same keys) strictly; frozen, eval mode.

        `arch` overrides constructor arguments (a checkpoint of a non-default VAE). Raises
        FileNotFoundError for a missing file, ValueError listing every missing, unexpected and
        wrong-shape key.
        """
        return load_strict(cls, path, "VAE", device, dtype, **arch)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video `[B, 1 + f k, 3, H, W]` in [-1, 1] -> latents `[B, 1 + k, z_dim, H/s, W/s]`.

        Runs chunks of 1, f, f, ... frames through one feature cache (the official order).
        """
        self.check_video(video)
        encoder = self.stream_encoder()
        sizes = [1] + [self.temporal_factor] * (self.num_latent_frames(video.shape[1]) - 1)
        return torch.cat([encoder.encode(chunk) for chunk in video.split(sizes, dim=1)], dim=1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `[B, T, z_dim, h, w]` -> video `[B, 1 + f (T - 1), 3, h*s, w*s]` in [-1, 1].

        Decodes one latent frame at a time through one feature cache (the official order).
        """
        return self.stream_decoder().decode(latents)

    def stream_decoder(self) -> "WanStreamDecoder":
        return WanStreamDecoder(self)

    def stream_encoder(self) -> "WanStreamEncoder":
        return WanStreamEncoder(self)

    def encode_chunk(self, video: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """Next video chunk `[B, t, 3, H, W]` -> its latents `[B, t', z_dim, h, w]` (see WanStreamEncoder)."""
        x = video.to(self.conv1.weight.dtype).permute(0, 2, 1, 3, 4)
        mu = self.conv1(self.encoder(x, cache), cache)[:, : self.latent_channels]
        mean, std = self._stats(mu)
        return ((mu - mean) / std).permute(0, 2, 1, 3, 4).to(video.dtype)

    def decode_chunk(self, latents: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """Next latent chunk `[B, t, z_dim, h, w]` -> its frames `[B, t', 3, H, W]`, in one pass."""
        fmt = memory_format_of(self.decoder.conv1.weight)
        z = latents.to(self.conv2.weight.dtype).permute(0, 2, 1, 3, 4).contiguous(memory_format=fmt)
        mean, std = self._stats(z)
        video = self.decoder(self.conv2(z * std + mean, cache), cache)
        return video.clamp(-1.0, 1.0).permute(0, 2, 1, 3, 4).to(latents.dtype)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel latent mean and std shaped `[1, C, 1, 1, 1]` on `like`'s device and dtype, made once per
        device and dtype (a host-to-device copy per latent frame waits for the GPU: it would stall a stream)."""
        key = (like.device, like.dtype)
        if key not in self._stat_tensors:
            mean = torch.tensor(self.latent_mean, device=like.device, dtype=like.dtype)
            std = torch.tensor(self.latent_std, device=like.device, dtype=like.dtype)
            self._stat_tensors[key] = mean.view(1, -1, 1, 1, 1), std.view(1, -1, 1, 1, 1)
        return self._stat_tensors[key]


class WanStreamDecoder(StreamDecoder):
    """Decodes consecutive latent chunks of one video; equals `WanVAE.decode` of their concatenation.

    The first latent frame of the stream gives 1 pixel frame, every later one `temporal_factor`.
    A chunk is decoded one latent frame at a time: activation memory stays that of one frame (on an
    H100 at 480x832, fp32: 9.5 GiB peak vs 17.5 GiB for 3 frames in one pass, at the same speed).
    """

    def __init__(self, vae: WanVAE):
        self.vae = vae
        self.cache = FeatureCache(vae.decode_buffers)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """`[B, t, z_dim, h, w]` -> `[B, tv, 3, H, W]` in [-1, 1]."""
        self.vae.check_latents(latents)
        frames = [self.vae.decode_chunk(frame, self.cache) for frame in latents.split(1, dim=1)]
        return torch.cat(frames, dim=1)

    def reset(self) -> None:
        self.cache = FeatureCache(self.vae.decode_buffers)


class WanStreamEncoder:
    """Encodes consecutive video chunks of one video; equals `WanVAE.encode` of their concatenation.

    The first chunk must hold `1 + f k` frames and every later one `f k` frames (`f` the temporal
    factor, `k >= 0` resp. `k >= 1`); a chunk of `n` frames after the first gives `n / f` latents.
    """

    def __init__(self, vae: WanVAE):
        self.vae = vae
        self.cache = FeatureCache()
        self.started = False

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """`[B, t, 3, H, W]` in [-1, 1] -> `[B, t', z_dim, H/s, W/s]`."""
        self.vae.check_video(video)
        frames, f = video.shape[1], self.vae.temporal_factor
        if (frames - (0 if self.started else 1)) % f or frames == 0:
            expected = f"a multiple of {f}" if self.started else f"1 + {f} k"
            raise ValueError(f"stream encoder chunk must have {expected} frames, got {frames}")
        self.started = True
        return self.vae.encode_chunk(video, self.cache)

    def reset(self) -> None:
        self.cache = FeatureCache()
        self.started = False
