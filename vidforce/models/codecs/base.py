"""The codec interface: pixel videos <-> normalised latents, in vidforce's one layout.

Videos are `[B, Tv, 3, H, W]` float in [-1, 1]; latents are `[B, T, C, h, w]` with
`h = H / spatial_factor`, `w = W / spatial_factor`. A codec with temporal factor `f` is causal in
time: the first latent frame stands for one pixel frame and every later one for `f` pixel frames,
so `Tv = 1 + f (T - 1)` (for `f = 1`, `Tv = T`).
"""
from abc import ABC, abstractmethod

import torch


class StreamDecoder(ABC):
    """Decodes latents chunk by chunk with its own causal state.

    Feeding the chunks of a latent video in order gives the same frames as decoding it at once.
    """

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Next latent chunk `[B, t, C, h, w]` -> its pixel frames `[B, tv, 3, H, W]` in [-1, 1]."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the stream: the next chunk is decoded as the start of a new video."""


class Codec(ABC):
    """Maps pixel videos to normalised latents and back.

    Attributes: `latent_channels` (C), `spatial_factor` (H / h), `temporal_factor` (f).
    """

    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    @abstractmethod
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video `[B, Tv, 3, H, W]` in [-1, 1] -> normalised latents `[B, T, C, h, w]`."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents `[B, T, C, h, w]` -> video `[B, Tv, 3, H, W]` in [-1, 1]."""

    @abstractmethod
    def stream_decoder(self) -> StreamDecoder:
        """A fresh decoder for one latent stream (its own causal state)."""

    def num_frames(self, latent_frames: int) -> int:
        """Pixel frames decoded from `latent_frames` latent frames: `1 + f (T - 1)`."""
        if latent_frames < 1:
            raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
        return 1 + self.temporal_factor * (latent_frames - 1)

    def num_latent_frames(self, pixel_frames: int) -> int:
        """Latent frames encoding `pixel_frames` frames; `pixel_frames` must be `1 + f k`."""
        f = self.temporal_factor
        if pixel_frames < 1 or (pixel_frames - 1) % f:
            raise ValueError(f"video frames must be 1 + {f} k for this codec, got {pixel_frames}")
        return 1 + (pixel_frames - 1) // f

    def check_video(self, video: torch.Tensor) -> None:
        """Raise ValueError unless `video` is `[B, T, 3, H, W]` with H and W divisible by s."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W], got shape {tuple(video.shape)}")
        s = self.spatial_factor
        height, width = video.shape[-2:]
        if height % s or width % s:
            raise ValueError(f"video height and width must be divisible by {s}, got H={height}, W={width}")

    def check_latents(self, latents: torch.Tensor) -> None:
        """Raise ValueError unless `latents` is `[B, T, latent_channels, h, w]`."""
        if latents.ndim != 5 or latents.shape[2] != self.latent_channels:
            raise ValueError(
                f"latents must be [B, T, {self.latent_channels}, h, w], got shape {tuple(latents.shape)}"
            )
