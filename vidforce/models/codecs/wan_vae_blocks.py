"""Building blocks of the Wan2.1 video VAE, causal in time, with a per-stream feature cache.

Tensors inside the VAE are channel-first video `[B, C, T, H, W]` (converted at the codec boundary).
Module attribute names and `nn.Sequential` indices follow the official checkpoint keys
(`residual.0.gamma`, `residual.2.weight`, `resample.1.weight`, `time_conv.weight`, ...).

Streaming: every layer that looks at past frames keeps what it needs in a `FeatureCache` (a dict
keyed by the layer). Calling a layer on consecutive chunks with the same cache gives the same result
as calling it once on their concatenation; a new (empty) cache starts a new video. A cache made with
`buffers=True` has each causal conv keep its past frames in a preallocated, zero-padded `FrameBuffer` that
it convolves in place: per call one copy of the new frames in and one of `2 p_t` frames to the front,
instead of concatenating the past, padding and cloning the history (the same numbers, bit for bit).
Channels-last weights (`channels_last`) make the convolutions run, and the buffers live, in NDHWC.
"""
from itertools import chain

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class FeatureCache(dict):
    """Per-stream state of the causal layers, keyed by layer; `buffers`: causal convs keep `FrameBuffer`s."""

    def __init__(self, buffers: bool = False):
        super().__init__()
        self.buffers = buffers


def memory_format_of(weight: torch.Tensor) -> torch.memory_format:
    """`channels_last(_3d)` for a conv weight stored so (see `channels_last`), else the default layout."""
    cl = torch.channels_last_3d if weight.dim() == 5 else torch.channels_last
    return cl if weight.is_contiguous(memory_format=cl) and not weight.is_contiguous() else torch.contiguous_format


def channels_last(module: nn.Module) -> None:
    """Store every 2D / 3D conv weight of `module` channels-last (NHWC / NDHWC), in place."""
    for conv in module.modules():
        if isinstance(conv, (nn.Conv2d, nn.Conv3d)):
            fmt = torch.channels_last_3d if isinstance(conv, nn.Conv3d) else torch.channels_last
            conv.weight.data = conv.weight.data.contiguous(memory_format=fmt)


class FrameBuffer:
    """`[B, C, history + T, H + 2 p_h, W + 2 p_w]`, zero around the frames: the last `history` input frames of
    the stream (zeros before its start), then room for the `T` frames of the current call."""

    def __init__(self, x: torch.Tensor, history: int, spatial_padding: tuple[int, int, int, int],
                 memory_format: torch.memory_format, past: "FrameBuffer | torch.Tensor | None"):
        b, c, t, h, w = x.shape
        p_w, _, p_h, _ = spatial_padding
        self.history, self.frames = history, t
        self.rows, self.cols = slice(p_h, p_h + h), slice(p_w, p_w + w)
        self.data = torch.zeros(b, c, history + t, h + 2 * p_h, w + 2 * p_w, dtype=x.dtype, device=x.device)
        self.data = self.data.contiguous(memory_format=memory_format)
        if isinstance(past, FrameBuffer):                     # the chunk size changed: carry the history over
            self.data[:, :, :history].copy_(past.data[:, :, :history])
        elif past is not None:                                # up to `history` unpadded frames
            self.data[:, :, history - past.shape[2]:history, self.rows, self.cols].copy_(past)

    def convolve(self, x: torch.Tensor, conv) -> torch.Tensor:
        """Write `x [B, C, T, H, W]` after the history, `conv` the whole buffer, keep the last `history` frames."""
        h, t = self.history, self.frames
        self.data[:, :, h:, self.rows, self.cols].copy_(x)
        y = conv(self.data)
        if t >= h:
            self.data[:, :, :h].copy_(self.data[:, :, t:t + h])
        else:                                                 # overlapping ranges: front to back
            for i in range(h):
                self.data[:, :, i].copy_(self.data[:, :, t + i])
        return y


class CausalConv3d(nn.Conv3d):
    """3D convolution, causal in time: `2 p_t` past frames on the left (cached or zeros), none after.

    Spatial padding is symmetric (`p_h`, `p_w`). The cache holds the last `2 p_t` input frames (a tensor, or
    a `FrameBuffer` in a cache with `buffers`).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size, padding=0):
        super().__init__(in_dim, out_dim, kernel_size)
        p_t, p_h, p_w = padding if isinstance(padding, tuple) else (padding,) * 3
        self.history = 2 * p_t
        self.spatial_padding = (p_w, p_w, p_h, p_h)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """`[B, C_in, T, H, W]` -> `[B, C_out, T, H', W']` (stride 1 in time)."""
        if cache.buffers:
            return self._buffered(x, cache)
        past_frames = 0
        if self.history:
            past = cache.get(self)
            if past is not None:
                x = torch.cat([past, x], dim=2)
                past_frames = past.shape[2]
            cache[self] = x[:, :, -self.history:].clone()
        return super().forward(F.pad(x, (*self.spatial_padding, self.history - past_frames, 0)))

    def _buffered(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        if not self.history:
            return super().forward(F.pad(x, self.spatial_padding) if any(self.spatial_padding) else x)
        buffer = cache.get(self)
        if not isinstance(buffer, FrameBuffer) or buffer.frames != x.shape[2]:
            buffer = FrameBuffer(x, self.history, self.spatial_padding, memory_format_of(self.weight), buffer)
            cache[self] = buffer
        return buffer.convolve(x, super().forward)


class RMSNorm(nn.Module):
    """`x / rms(x) * gamma` over the channel dim (dim 1), computed in fp32.

    `spatial_dims` is 3 for video `[B, C, T, H, W]` (gamma `[C, 1, 1, 1]`) and 2 for images.
    """

    def __init__(self, dim: int, spatial_dims: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, *([1] * spatial_dims)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gamma.shape[0] ** 0.5
        return (F.normalize(x.float(), dim=1) * scale * self.gamma.float()).to(x.dtype)


def per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every frame: `[B, C, T, H, W]` -> `[B, C', T, H', W']`."""
    frames = x.shape[2]
    y = module(rearrange(x, "b c t h w -> (b t) c h w"))
    return rearrange(y, "(b t) c h w -> b c t h w", t=frames)


def run_layers(layers, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
    """Run `layers` in order, handing the cache to those that keep state across chunks."""
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, CACHED_LAYERS) else layer(x)
    return x


class ResidualBlock(nn.Module):
    """`shortcut(x) + conv(silu(norm(conv(silu(norm(x))))))` with causal 3x3x3 convs.

    Index 5 of `residual` (dropout in the original, p = 0) is an identity; it keeps key indices.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, 3), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, 3), nn.SiLU(), nn.Identity(), CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """`[B, C_in, T, H, W]` -> `[B, C_out, T, H, W]`."""
        return run_layers([self.shortcut], x, cache) + run_layers(self.residual, x, cache)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame (no mixing across time)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, 2)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C, T, H, W]` -> same shape."""
        return x + per_frame(self._attend, x)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """Frames `[N, C, H, W]` -> `proj(attention(q, k, v))`, q/k/v the thirds of `to_qkv`."""
        height, width = x.shape[-2:]
        q, k, v = rearrange(self.to_qkv(self.norm(x)), "n c h w -> n 1 (h w) c").chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(y, "n 1 (h w) c -> n c h w", h=height, w=width))


class Downsample(nn.Module):
    """Halve H and W (pad right/bottom by 1, 3x3 stride-2 conv); if `temporal`, halve time causally.

    Temporal rule on frames `x_0, x_1, ...`: output 0 is `x_0`; output j >= 1 is
    `time_conv(x_{2j-2}, x_{2j-1}, x_{2j})`. The cache keeps the last frame seen, so every chunk after
    the first must bring an even number of frames (the first an odd number).
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if temporal:
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """`[B, C, T, H, W]` -> `[B, C, T', H/2, W/2]`."""
        x = per_frame(self.resample, x)
        if not self.temporal:
            return x
        past = cache.get(self)
        seq = x if past is None else torch.cat([past, x], dim=2)
        if seq.shape[2] % 2 == 0:
            raise ValueError(
                f"temporal downsampling got {x.shape[2]} frames; the first chunk needs an odd count, "
                "later chunks an even one"
            )
        cache[self] = seq[:, :, -1:].clone()
        outputs = [x[:, :, :1]] if past is None else []
        if seq.shape[2] >= 3:
            outputs.append(self.time_conv(seq))
        return torch.cat(outputs, dim=2)


class Upsample(nn.Module):
    """Double H and W (nearest, then 3x3 conv to `dim // 2` channels); if `temporal`, double time.

    Temporal rule: frame 0 of the stream passes through unchanged; every later frame becomes two,
    the two channel halves of a causal `time_conv` (3 frames, 2*dim channels) run over frames 1, 2, ...
    (zero history before frame 1). So latent frames decode to 1, 2, 2, ... frames per stage.
    """

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.resample = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="nearest-exact"), nn.Conv2d(dim, dim // 2, 3, padding=1)
        )
        if temporal:
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """`[B, C, T, H, W]` -> `[B, C/2, T', 2H, 2W]`."""
        if self.temporal:
            x = self._double_time(x, cache)
        return per_frame(self.resample, x)

    def _double_time(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        """`[B, C, T, H, W]` -> `[B, C, T', H, W]`: `T' = 1 + 2 (T - 1)` at stream start, else `2 T`."""
        outputs = []
        if self.time_conv not in cache:
            outputs.append(x[:, :, :1])
            x = x[:, :, 1:]
            batch, channels, _, height, width = x.shape
            cache[self.time_conv] = x.new_zeros(batch, channels, self.time_conv.history, height, width)
        if x.shape[2]:
            y = self.time_conv(x, cache)
            outputs.append(rearrange(y, "b (two c) t h w -> b c (t two) h w", two=2))
        return torch.cat(outputs, dim=2)


CACHED_LAYERS = (CausalConv3d, ResidualBlock, Downsample, Upsample)


class Encoder3d(nn.Module):
    """Video `[B, 3, T, H, W]` -> `[B, out_dim, T', H/s, W/s]` (`s = 2^(len(dim_mult) - 1)`).

    Layout: `conv1`, `downsamples` (per stage `num_res_blocks` ResidualBlocks, then a Downsample except
    after the last stage), `middle` (ResidualBlock, AttentionBlock, ResidualBlock), `head`.
    """

    def __init__(self, dim: int, out_dim: int, dim_mult, num_res_blocks: int, temporal_downsample):
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers = []
        for stage, (in_dim, stage_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for block in range(num_res_blocks):
                layers.append(ResidualBlock(in_dim if block == 0 else stage_dim, stage_dim))
            if stage < len(dim_mult) - 1:
                layers.append(Downsample(stage_dim, temporal_downsample[stage]))
        self.downsamples = nn.Sequential(*layers)
        self.middle = _middle(dims[-1])
        self.head = _head(dims[-1], out_dim)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        return run_layers(chain([self.conv1], self.downsamples, self.middle, self.head), x, cache)


class Decoder3d(nn.Module):
    """Latents `[B, z_dim, T, h, w]` -> video `[B, 3, T', h*s, w*s]`.

    Layout: `conv1`, `middle`, `upsamples` (per stage `num_res_blocks + 1` ResidualBlocks, then an
    Upsample except after the last stage; an Upsample halves channels), `head`.
    """

    def __init__(self, dim: int, z_dim: int, dim_mult, num_res_blocks: int, temporal_upsample):
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0])
        layers = []
        for stage, (in_dim, stage_dim) in enumerate(zip(dims[:-1], dims[1:])):
            in_dim = in_dim // 2 if stage > 0 else in_dim
            for block in range(num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim if block == 0 else stage_dim, stage_dim))
            if stage < len(dim_mult) - 1:
                layers.append(Upsample(stage_dim, temporal_upsample[stage]))
        self.upsamples = nn.Sequential(*layers)
        self.head = _head(dims[-1], 3)

    def forward(self, x: torch.Tensor, cache: FeatureCache) -> torch.Tensor:
        return run_layers(chain([self.conv1], self.middle, self.upsamples, self.head), x, cache)


def _middle(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim, 3), nn.SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))
