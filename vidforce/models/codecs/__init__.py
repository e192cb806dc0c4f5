"""Codecs between pixel videos `[B, T, 3, H, W]` and latents `[B, T, C, h, w]`."""
from vidforce.models.codecs.base import Codec, StreamDecoder
from vidforce.models.codecs.pixel import PixelCodec
from vidforce.models.codecs.taehv import TAEHV
from vidforce.models.codecs.wan_vae import WanVAE

__all__ = ["Codec", "PixelCodec", "StreamDecoder", "TAEHV", "WanVAE"]
