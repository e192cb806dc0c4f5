"""Start images of image-to-video (``--image``): read, fitted to the stream's frame size, encoded by the codec.

Size rule: an image of another size than the stream's ``H x W`` (``data.latent_height`` x ``data.latent_width``
times the codec's spatial factor) is scaled, aspect ratio kept, to the smallest size that covers ``H x W``
(bicubic), then centre-cropped to ``H x W``. An alpha channel is dropped, a palette or grey image becomes RGB,
an animated image gives its first frame.

The codec encodes the image as a video of one frame: the Wan VAE's causal first frame (one pixel frame -> one
latent frame), PixelCodec's space-to-depth. ``Streamer.frames(..., first=latent)`` commits that latent frame to
the KV cache at frame 0 as clean context before the first chunk, and the chunks start at frame 1.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def read_image(path: str | Path) -> np.ndarray:
    """The image at ``path`` as uint8 ``[h, w, 3]``; FileNotFoundError / ValueError naming the file."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 (only for image starts)
    if not Path(path).is_file():
        raise FileNotFoundError(f"--image not found: {path}")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"--image {path} is not a readable image ({err})") from None


def fit_image(pixels: np.ndarray, height: int, width: int) -> tuple[np.ndarray, str]:
    """``pixels [h, w, 3]`` fitted to ``[height, width, 3]`` by the module's size rule, and what was done."""
    from PIL import Image  # noqa: PLC0415
    h, w = pixels.shape[:2]
    if (h, w) == (height, width):
        return pixels, f"{w}x{h}, the stream's size"
    scale = max(height / h, width / w)
    sh, sw = max(height, math.ceil(h * scale - 1e-9)), max(width, math.ceil(w * scale - 1e-9))
    scaled = np.asarray(Image.fromarray(pixels).resize((sw, sh), Image.BICUBIC))
    top, left = (sh - height) // 2, (sw - width) // 2
    return (scaled[top:top + height, left:left + width],
            f"{w}x{h} scaled to {sw}x{sh} and centre-cropped to the stream's {width}x{height}")


def encode_image(codec, pixels: np.ndarray, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> the codec's latents ``[1, 1, C, H/s, W/s]`` of it as a one-frame video."""
    video = torch.tensor(pixels, device=device).permute(2, 0, 1)[None, None]
    with torch.no_grad():
        return codec.encode((video.float() / 127.5 - 1.0).to(dtype))


def start_latent(codec, pixels: np.ndarray, latent_hw: tuple[int, int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, str]:
    """The start latent ``[1, 1, C, h, w]`` of an image for latents of ``latent_hw``, and how it was fitted."""
    s = codec.spatial_factor
    fitted, note = fit_image(pixels, latent_hw[0] * s, latent_hw[1] * s)
    return encode_image(codec, fitted, device, dtype), note
