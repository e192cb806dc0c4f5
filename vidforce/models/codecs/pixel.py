"""PixelCodec: exact, invertible space-to-depth for the mini world (stands in for the VAE).

Each `s x s` patch of a frame becomes `3 s^2` channels, ordered `(c, dy, dx)`:
`latents[b, t, c*s*s + dy*s + dx, i, j] = scale * video[b, t, c, i*s + dy, j*s + dx]`.
No temporal compression (factor 1). `scale` defaults to 1: latents are pixel values in [-1, 1],
the usual data range of pixel-space diffusion; the mini-world config may pick another scale to
bring its latent variance near 1 (decode divides it out, so the round trip stays exact for
powers of two).
"""
import torch
from einops import rearrange

from vidforce.models.codecs.base import Codec, StreamDecoder


class PixelCodec(Codec):
    """Space-to-depth codec with patch size `spatial_factor` (s) and latent `scale`."""

    temporal_factor = 1

    def __init__(self, spatial_factor: int = 1, scale: float = 1.0):
        if spatial_factor < 1:
            raise ValueError(f"spatial_factor must be >= 1, got {spatial_factor}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.spatial_factor = spatial_factor
        self.latent_channels = 3 * spatial_factor * spatial_factor
        self.scale = scale

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video `[B, T, 3, H, W]` -> latents `[B, T, 3 s^2, H/s, W/s]` (times `scale`)."""
        self.check_video(video)
        s = self.spatial_factor
        return rearrange(video, "b t c (h dy) (w dx) -> b t (c dy dx) h w", dy=s, dx=s) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents `[B, T, 3 s^2, h, w]` -> video `[B, T, 3, h s, w s]`, clamped to [-1, 1]."""
        self.check_latents(latents)
        s = self.spatial_factor
        video = rearrange(latents / self.scale, "b t (c dy dx) h w -> b t c (h dy) (w dx)", dy=s, dx=s)
        return video.clamp(-1.0, 1.0)

    def stream_decoder(self) -> "PixelStreamDecoder":
        return PixelStreamDecoder(self)


class PixelStreamDecoder(StreamDecoder):
    """Frames are independent under PixelCodec: each chunk decodes on its own (no state to keep)."""

    def __init__(self, codec: PixelCodec):
        self.codec = codec

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """`[B, t, 3 s^2, h, w]` -> `[B, t, 3, H, W]`."""
        return self.codec.decode(latents)

    def reset(self) -> None:
        """Nothing to forget: the codec has no temporal context."""
