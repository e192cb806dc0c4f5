"""Text encoders: prompts -> context embeddings `[B, L, D]` for the DiT's cross-attention.

All encoders share `encode(prompts) -> [B, text_len, D]` with exact zeros after each prompt's own
length (Wan pads umT5 outputs this way), and `encode_unpadded(prompts) -> [len_i, D]` per prompt.
- `PromptEmbeddingCache`: precomputed embeddings in a safetensors file keyed by sha1(prompt).
- `UMT5TextEncoder`: umT5 through `transformers`, from a local directory only.
- `TinyTextEncoder`: frozen, deterministic hashed-word embeddings for the mini world.
"""
import hashlib
import html
import math
import os
import re
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file


class TextEncoder(Protocol):
    text_len: int

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> `[B, text_len, D]`, zero beyond each prompt's length."""


def pad_embeddings(embeddings: list[torch.Tensor], text_len: int) -> torch.Tensor:
    """Unpadded `[len_i, D]` tensors -> `[B, text_len, D]`, zeros after row `len_i`."""
    if not embeddings:
        raise ValueError("no prompts to encode")
    too_long = [e.shape[0] for e in embeddings if e.shape[0] > text_len]
    if too_long:
        raise ValueError(f"embedding of {max(too_long)} tokens exceeds text_len={text_len}")
    first = embeddings[0]
    out = first.new_zeros(len(embeddings), text_len, first.shape[-1])
    for row, embedding in enumerate(embeddings):
        out[row, : embedding.shape[0]] = embedding
    return out


def prompt_key(prompt: str) -> str:
    """Cache key of a prompt: sha1 hex digest of its UTF-8 bytes."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()


class PromptEmbeddingCache:
    """Unpadded prompt embeddings `[len, D]` in a safetensors file, keyed by `prompt_key(prompt)`.

    A missing file starts an empty cache (`save` creates it); `open` requires the file.
    """

    def __init__(self, path, text_len: int = 512, device="cpu"):
        self.path = Path(path)
        self.text_len = text_len
        self.device = device
        self.embeddings: dict[str, torch.Tensor] = load_file(self.path) if self.path.is_file() else {}

    @classmethod
    def open(cls, path, text_len: int = 512, device="cpu") -> "PromptEmbeddingCache":
        """Like the constructor, but FileNotFoundError when `path` does not exist."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"prompt-embedding cache not found: {path}")
        return cls(path, text_len, device)

    def __len__(self) -> int:
        return len(self.embeddings)

    def __contains__(self, prompt: str) -> bool:
        return prompt_key(prompt) in self.embeddings

    def add(self, prompt: str, embedding: torch.Tensor) -> None:
        """Store one prompt's unpadded embedding `[len, D]` (kept on CPU)."""
        if embedding.ndim != 2:
            raise ValueError(f"embedding must be [len, D], got shape {tuple(embedding.shape)}")
        if self.embeddings:
            dim = next(iter(self.embeddings.values())).shape[-1]
            if embedding.shape[-1] != dim:
                raise ValueError(f"embedding dim {embedding.shape[-1]} differs from the cache's {dim}")
        self.embeddings[prompt_key(prompt)] = embedding.detach().cpu().contiguous()

    def get(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> `[B, text_len, D]` on `device`; KeyError naming every prompt not cached."""
        missing = [p for p in prompts if p not in self]
        if missing:
            raise KeyError(f"{len(missing)} prompt(s) not in {self.path}: {missing[:5]}")
        embeddings = [self.embeddings[prompt_key(p)] for p in prompts]
        return pad_embeddings(embeddings, self.text_len).to(self.device)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Same as `get`: the cache is a text encoder."""
        return self.get(prompts)

    def save(self) -> None:
        """Write the file atomically (a temporary file next to it, then `os.replace`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        save_file(self.embeddings, tmp)
        os.replace(tmp, self.path)


def clean_prompt(prompt: str) -> str:
    """Wan's prompt cleaning without ftfy: unescape HTML entities, collapse whitespace."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(prompt))).strip()


class UMT5TextEncoder:
    """umT5 encoder (Wan2.1 uses umt5-xxl, D = 4096) through `transformers`, local files only.

    `local_dir` holds the `UMT5EncoderModel` (config.json + weights); `tokenizer_dir` (default
    `local_dir`) its tokenizer. Prompts are cleaned, tokenized with EOS, truncated to `text_len`.
    """

    def __init__(self, local_dir, text_len: int = 512, dtype: torch.dtype = torch.bfloat16, device="cpu",
                 tokenizer_dir=None):
        try:
            from transformers import AutoTokenizer, UMT5EncoderModel
        except ImportError as error:
            raise ImportError("the umt5 text encoder needs transformers: pip install 'vidforce[text]'") from error
        tokenizer_dir = Path(tokenizer_dir or local_dir)
        _require_files(Path(local_dir), "umT5 model", [("config.json",), ("*.safetensors", "*.bin")])
        _require_files(tokenizer_dir, "umT5 tokenizer", [("tokenizer.json", "spiece.model")])
        self.text_len = text_len
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        model = UMT5EncoderModel.from_pretrained(local_dir, local_files_only=True, dtype=dtype)
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)

    @torch.no_grad()
    def encode_unpadded(self, prompts: list[str]) -> list[torch.Tensor]:
        """Prompts -> one `[len_i, D]` tensor each (`len_i` tokens incl. EOS, at most `text_len`)."""
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
            max_length=self.text_len, add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.device)
        hidden = self.model(input_ids=tokens.input_ids.to(self.device), attention_mask=mask).last_hidden_state
        return [states[:length] for states, length in zip(hidden, mask.sum(dim=1).tolist())]

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> `[B, text_len, D]`, zero at padding positions."""
        return pad_embeddings(self.encode_unpadded(prompts), self.text_len)


def _require_files(directory: Path, what: str, groups: list[tuple[str, ...]]) -> None:
    """FileNotFoundError unless `directory` has, for each group, a file matching one of its patterns."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{what} directory not found: {directory}")
    lacking = [" or ".join(group) for group in groups if not any(any(directory.glob(g)) for g in group)]
    if lacking:
        raise FileNotFoundError(f"{what} directory {directory} lacks: {', '.join(lacking)}")


class TinyTextEncoder:
    """Frozen hashed-word encoder for the mini world: same prompt -> same embedding in any process.

    Words are the runs of lowercase letters and digits of the prompt (at most `text_len`): "3 balls" is the two
    words "3" and "balls" (the mini world's prompts state a count). Word i's embedding is
    `table[bucket(word)] + pos[i]`: `table` is `[num_buckets, dim]` standard normal drawn from
    `seed`, `bucket` the first 8 bytes of sha1(word) mod `num_buckets`, `pos` the sinusoidal code
    `pos[i, 2k] = sin(i w_k)`, `pos[i, 2k+1] = cos(i w_k)`, `w_k = 10000^(-2k/dim)`. A prompt
    without words is all zeros.
    """

    def __init__(self, dim: int = 64, text_len: int = 16, seed: int = 0, num_buckets: int = 4096, device="cpu"):
        if dim % 2:
            raise ValueError(f"TinyTextEncoder dim must be even, got {dim}")
        self.text_len = text_len
        self.num_buckets = num_buckets
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.randn(num_buckets, dim, generator=generator).to(device)
        self.positions = sinusoidal_positions(text_len, dim).to(device)

    def word_ids(self, prompt: str) -> list[int]:
        """Bucket index of each word of `prompt`, truncated to `text_len` words."""
        words = re.findall(r"[a-z0-9]+", prompt.lower())[: self.text_len]
        return [int.from_bytes(hashlib.sha1(w.encode()).digest()[:8], "big") % self.num_buckets for w in words]

    def encode_unpadded(self, prompts: list[str]) -> list[torch.Tensor]:
        """Prompts -> one `[words_i, dim]` tensor each."""
        out = []
        for prompt in prompts:
            ids = torch.tensor(self.word_ids(prompt), dtype=torch.long, device=self.table.device)
            out.append(self.table[ids] + self.positions[: len(ids)])
        return out

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> `[B, text_len, dim]`, zero after each prompt's words."""
        return pad_embeddings(self.encode_unpadded(prompts), self.text_len)


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """`[length, dim]` code: even channels `sin(i w_k)`, odd `cos(i w_k)`, `w_k = 10000^(-2k/dim)`."""
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * freqs[None]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(length, dim).float()


def build_text_encoder(kind: str, **kwargs) -> TextEncoder:
    """`kind` (config field `text.encoder`): "tiny" | "umt5" | "cache"; kwargs go to that class."""
    if kind == "tiny":
        return TinyTextEncoder(**kwargs)
    elif kind == "umt5":
        return UMT5TextEncoder(**kwargs)
    elif kind == "cache":
        return PromptEmbeddingCache.open(**kwargs)
    else:
        raise ValueError(f"text.encoder must be one of 'tiny', 'umt5', 'cache', got {kind!r}")
