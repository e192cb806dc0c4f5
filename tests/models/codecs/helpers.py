"""What the codec tests share: a checkpoint written and loaded back."""
from pathlib import Path

import torch
from safetensors.torch import save_file

from vidforce.models.codecs import Codec


def checkpoint_round_trip(codec: Codec, path: Path, **arch) -> Codec:
    """``codec``'s weights written to ``path`` (``.pth``: ``torch.save``, else safetensors) and loaded back by
    ``type(codec).from_checkpoint(path, **arch)``; asserts the loaded codec is frozen (eval, no parameter needs
    grad) and holds the same keys with equal values."""
    state = {k: v.contiguous() for k, v in codec.state_dict().items()}
    torch.save(state, path) if path.suffix == ".pth" else save_file(state, path)
    loaded = type(codec).from_checkpoint(path, **arch)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(value, state[key]) for key, value in loaded.state_dict().items())
    return loaded
