"""Build the non-DiT parts named by a config: text encoder and codec."""
from __future__ import annotations

import torch

from vidforce.models.codecs.pixel import PixelCodec
from vidforce.models.text import build_text_encoder


def text_encoder(cfg, device: torch.device | str = "cpu"):
    """The text encoder of ``cfg.text`` producing ``[B, model.text_len, model.text_dim]``."""
    kind, m = cfg.text.encoder, cfg.model
    if kind == "tiny":
        return build_text_encoder("tiny", dim=m.text_dim, text_len=m.text_len, device=device)
    if not cfg.text.path:
        raise ValueError(f"text.encoder={kind} needs text.path")
    if kind == "umt5":
        return build_text_encoder("umt5", local_dir=cfg.text.path, text_len=m.text_len, device=device)
    return build_text_encoder(kind, path=cfg.text.path, text_len=m.text_len, device=device)


def codec(cfg, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """The codec of ``cfg.codec``; its latent channels must match ``model.in_dim``."""
    kind = cfg.codec.kind
    if kind == "pixel":
        out = PixelCodec(spatial_factor=cfg.codec.spatial_factor)
    elif kind == "wan_vae":
        from vidforce.models.codecs.wan_vae import WanVAE  # noqa: PLC0415
        if not cfg.codec.path:
            raise ValueError("codec.kind=wan_vae needs codec.path (Wan2.1_VAE.pth)")
        out = WanVAE.from_checkpoint(cfg.codec.path, device=device, dtype=dtype)
        out.set_decode_layout(cfg.codec.decode_buffers, cfg.codec.channels_last)
    elif kind == "taehv":
        from vidforce.models.codecs.taehv import TAEHV  # noqa: PLC0415
        if not cfg.codec.path:
            raise ValueError("codec.kind=taehv needs codec.path (taew2_1.pth)")
        out = TAEHV.from_checkpoint(cfg.codec.path, device=device, dtype=dtype)
    else:
        raise ValueError(f"codec.kind must be pixel, wan_vae or taehv, got {kind!r}")
    if out.latent_channels != cfg.model.in_dim:
        raise ValueError(f"codec.{kind} gives {out.latent_channels} latent channels but model.in_dim is "
                         f"{cfg.model.in_dim}")
    return out
