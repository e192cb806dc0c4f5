"""Strict loading of codec checkpoints: read a flat state dict, name every key that does not fit, in one line."""
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


def read_state_dict(path, what: str = "VAE") -> dict[str, torch.Tensor]:
    """Tensors of a `.pth` / `.pt` (loaded with `weights_only=True`) or `.safetensors` file (`what` names it
    in errors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(path)
    if path.suffix not in (".pth", ".pt"):
        raise ValueError(f"{what} checkpoint {path} must end in .pth, .pt or .safetensors")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{what} checkpoint {path} is not a flat state dict of tensors")
    return state_dict


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], context: str) -> None:
    """Raise one ValueError (one line), `context` first, listing missing, unexpected and wrong-shape keys."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{key} (expected {expected[key]}, got {tuple(state_dict[key].shape)})"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != expected[key]
    ]
    problems = [
        f"{name} ({len(keys)}): {_first(keys)}"
        for name, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape))
        if keys
    ]
    if problems:
        raise ValueError(f"{context}: " + "; ".join(problems))


def load_strict(cls, path, what: str, device, dtype: torch.dtype, **arch) -> nn.Module:
    """`cls(**arch)` with the weights of `path`, checked by :func:`check_state_dict`; frozen, eval mode."""
    state_dict = read_state_dict(path, what)
    with torch.device("meta"):
        model = cls(**arch)
    check_state_dict(model, state_dict, f"{path} does not match {cls.__name__}({model.arch})")
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _first(items: list[str], limit: int = 12) -> str:
    """`items` joined by commas, cut after `limit` with a count of the rest."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")
