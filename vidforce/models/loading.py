"""Wan2.1 DiT weights from any supported checkpoint into our modules, streamed tensor by tensor.

Formats (all end up with our names = the official Wan2.1 names, e.g. ``blocks.0.self_attn.q.weight``):
- **wan**: official Wan2.1 checkpoints and our exports. One ``.safetensors`` (1.3B:
  ``diffusion_pytorch_model.safetensors``), shards + ``*.safetensors.index.json`` with a ``weight_map``
  (14B: ``diffusion_pytorch_model-0000N-of-00006.safetensors``), or a torch ``.pt/.pth/.bin/.ckpt`` file.
  Our exports add ``__metadata__[MODEL_CONFIG_KEY]``: the model config as JSON (:func:`config_metadata`).
- **diffusers**: ``WanTransformer3DModel`` names (``condition_embedder.*``, ``blocks.N.attn1.to_q``, ``proj_out``,
  ``scale_shift_table`` ...), same shapes; a pipeline folder is read from its ``transformer/`` subfolder.
- **Self-Forcing / CausVid training checkpoints**: a torch file holding a dict of state dicts
  (``generator``, ``generator_ema``, ``critic``); the chosen one has keys ``model.<wan name>``.

Detection rules (``fmt="auto"``), in order:
1. A torch file whose top-level dict has dict values is a training checkpoint: ``checkpoint_key`` picks the
   entry; ``auto`` takes the first present of ``AUTO_ORDER`` (EMA first: Self-Forcing's released models are
   evaluated with ``--use_ema``). A plain state dict or safetensors file needs ``checkpoint_key="auto"``.
2. The wrapper fragments ``WRAPPER_FRAGMENTS`` (FSDP, activation checkpointing, torch.compile) are dropped.
3. Whatever precedes ``patch_embedding.weight`` (``model.``, ``module.`` ...) is a prefix, dropped from every key.
4. Names are diffusers when a key starts with ``condition_embedder.`` / ``proj_out.`` or holds ``.attn1.``;
   otherwise wan. ``fmt="wan"`` or ``"diffusers"`` overrides this step.

A ``config.json`` beside the weights whose ``_class_name`` is ``WanTransformer3DModel`` (diffusers) or ``WanModel``
(official) states the architecture, ``num_heads`` included (the weights do not determine it):
:func:`stated_arch` turns it into our ``ModelConfig`` fields, for ``build.check_checkpoint`` to compare.
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from vidforce.config import MODEL_PRESETS

FORMATS = ("auto", "wan", "diffusers")
AUTO_ORDER = ("generator_ema", "generator", "model")
WRAPPER_FRAGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
ANCHOR = "patch_embedding.weight"
MODEL_CONFIG_KEY = "model_config"
CONFIG_JSON = "config.json"
# config.json key -> our ModelConfig field ("head_dim" = dim // num_heads), per _class_name.
CONFIG_JSON_FIELDS = {
    "WanTransformer3DModel": {"patch_size": "patch_size", "num_attention_heads": "num_heads",
                              "attention_head_dim": "head_dim", "in_channels": "in_dim", "out_channels": "out_dim",
                              "text_dim": "text_dim", "freq_dim": "freq_dim", "ffn_dim": "ffn_dim",
                              "num_layers": "num_layers", "cross_attn_norm": "cross_attn_norm", "eps": "eps",
                              "rope_max_seq_len": "rope_max_len"},
    "WanModel": {k: k for k in ("patch_size", "text_len", "in_dim", "dim", "ffn_dim", "freq_dim", "text_dim",
                                "out_dim", "num_heads", "num_layers", "cross_attn_norm", "eps")},
}
# config.json keys with the one value our Wan2.1 text-to-video DiT implements (q/k RMS-normed across heads).
CONFIG_JSON_FIXED = {
    "WanTransformer3DModel": {"qk_norm": "rms_norm_across_heads", "image_dim": None, "added_kv_proj_dim": None,
                              "pos_embed_seq_len": None},
    "WanModel": {"model_type": "t2v", "window_size": [-1, -1], "qk_norm": True},
}
LIST_LIMIT = 10
DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}   # vidforce convert

_ATTN = (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"), ("norm_q", "norm_q"), ("norm_k", "norm_k"))
# Wan module / parameter path -> diffusers (scripts/convert_wan_to_diffusers.py, transformer_wan.py).
_TOP = {"patch_embedding": "patch_embedding", "time_projection.1": "condition_embedder.time_proj",
        **{f"{ours}_embedding.{i}": f"condition_embedder.{ours}_embedder.linear_{j}"
           for ours in ("text", "time") for i, j in ((0, 1), (2, 2))},
        "head.head": "proj_out", "head.modulation": "scale_shift_table"}
_BLOCK = {"modulation": "scale_shift_table", "norm3": "norm2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
          **{f"{ours}.{a}": f"{theirs}.{b}" for ours, theirs in (("self_attn", "attn1"), ("cross_attn", "attn2"))
             for a, b in _ATTN}}
_TOP_BACK, _BLOCK_BACK = ({v: k for k, v in table.items()} for table in (_TOP, _BLOCK))


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model (lists missing, unexpected and wrong-shape keys)."""


class LoadReport(NamedTuple):
    missing: list[str]          # model keys the checkpoint lacks (only with strict=False, or optional ones)
    unexpected: list[str]       # checkpoint keys the model lacks (only with strict=False)


def _rename(key: str, top: Mapping[str, str], block: Mapping[str, str]) -> str:
    """One key through a table of module paths (``blocks.N.<rest>`` maps ``<rest>``); unknown keys pass unchanged."""
    head, name, table = "", key, top
    if key.startswith("blocks.") and key.count(".") >= 2:
        cut = key.index(".", len("blocks.")) + 1                 # just after "blocks.N."
        head, name, table = key[:cut], key[cut:], block
    for src, dst in table.items():
        if name == src or name.startswith(src + "."):
            return head + dst + name[len(src):]
    return key


def wan_to_diffusers_key(key: str) -> str:
    """``blocks.0.norm3.weight`` -> ``blocks.0.norm2.weight`` (the cross-attn norm), ``head.head`` -> ``proj_out``."""
    return _rename(key, _TOP, _BLOCK)


def diffusers_to_wan_key(key: str) -> str:
    """Inverse of :func:`wan_to_diffusers_key`."""
    return _rename(key, _TOP_BACK, _BLOCK_BACK)


_OUT_NAMES = {"wan": str, "diffusers": wan_to_diffusers_key}   # output naming -> key renaming


def training_checkpoint(p: Path) -> Path | None:
    """The run or step directory when ``p`` is a vidforce training checkpoint (a run directory, its
    ``checkpoints/``, a ``step_XXXXXX/``) or a torch file or folder inside a step directory (``trainer.pt``,
    ``rank_*.pt``, the engines' DeepSpeed folders), else None. Safetensors files are always weights."""
    if p.is_file() and (p.name.endswith((".safetensors", ".index.json")) or p.suffix not in TORCH_SUFFIXES):
        return None
    if p.is_dir() and (p / "checkpoints" / "latest").is_file():
        return p
    if p.is_dir() and p.name == "checkpoints" and (p / "latest").is_file():
        return p.parent
    return next((d for d in [p, *p.parents][:4] if d.is_dir() and (d / "trainer.pt").is_file()), None)


def checkpoint_files(path: str | Path) -> list[Path]:
    """Weight files of a checkpoint: a file, an index json (its shards) or a directory (see :func:`_pick_in_dir`).
    A training checkpoint is refused with the ``vidforce export`` command that turns it into weights."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    run = training_checkpoint(p)
    if run is not None:
        raise ValueError(f"{p} is a vidforce training checkpoint, not model weights: run `vidforce export {run} "
                         f"--out FILE.safetensors` and load FILE.safetensors")
    if p.is_dir():
        return checkpoint_files(_pick_in_dir(p))
    if p.name.endswith(".index.json"):
        weight_map = json.loads(p.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{p} has no 'weight_map'")
        files = [p.parent / name for name in sorted(set(weight_map.values()))]
        if not all(f.is_file() for f in files):
            raise FileNotFoundError(f"shards listed in {p} not found: {[str(f) for f in files if not f.is_file()]}")
        return files
    if p.suffix in (".safetensors", *TORCH_SUFFIXES):
        return [p]
    raise ValueError(f"unsupported checkpoint file {p}: expected .safetensors, .safetensors.index.json or "
                     f"one of {TORCH_SUFFIXES}")


def _pick_in_dir(d: Path) -> Path:
    """In a directory: an index json, else one ``.safetensors`` (``diffusion_pytorch_model*`` preferred), else a
    diffusers pipeline's ``transformer/``, else a single torch file."""
    for suffix in (".safetensors.index.json", ".safetensors"):
        found = sorted(d.glob("*" + suffix))
        preferred = d / ("diffusion_pytorch_model" + suffix)
        if preferred in found or len(found) == 1:
            return preferred if preferred in found else found[0]
        if found:
            raise ValueError(f"{d} holds several {suffix} files ({', '.join(f.name for f in found)}); name one")
    if (d / "transformer").is_dir():
        return d / "transformer"
    found = sorted(f for s in TORCH_SUFFIXES for f in d.glob("*" + s))
    if len(found) != 1:
        raise ValueError(f"no single checkpoint in {d}: found {[f.name for f in found]}")
    return found[0]


def _torch_load(path: Path):
    """A torch file's contents: memory-mapped (zip format), or read whole (the legacy format)."""
    try:
        return torch.load(path, map_location="cpu", mmap=zipfile.is_zipfile(path), weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        unpickler = [line for line in lines if "WeightsUnpickler error" in line or line.startswith("Unsupported")]
        reason = unpickler[-1] if unpickler else lines[0] if lines else f"{type(err).__name__} (truncated?)"
        raise ValueError(f"{path} is not a readable torch checkpoint: {reason}") from None


def _select_state_dict(obj, checkpoint_key: str, path: Path) -> tuple[Mapping, str]:
    """The flat state dict of a torch file and the training-checkpoint entry it came from (``""`` if flat)."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    nested = [k for k, v in obj.items() if isinstance(v, Mapping)]
    if not nested:
        if checkpoint_key != "auto":
            raise ValueError(f"checkpoint_key={checkpoint_key!r} but {path} holds a plain state dict; use 'auto'")
        return obj, ""
    key = next((k for k in AUTO_ORDER if k in nested), "") if checkpoint_key == "auto" else checkpoint_key
    if key not in nested:
        raise ValueError(f"checkpoint_key={checkpoint_key!r}: {path} holds the state dicts {nested}")
    return obj[key], key


def _strip_names(raw: Iterable[str], path: Path) -> dict[str, str]:
    """Raw key -> key without wrapper fragments and without the prefix found before ``patch_embedding.weight``."""
    clean = {k: functools.reduce(lambda s, frag: s.replace(frag, ""), WRAPPER_FRAGMENTS, k) for k in raw}
    prefixes = {c[:-len(ANCHOR)] for c in clean.values() if c.endswith(ANCHOR)}
    if len(prefixes) > 1:
        raise ValueError(f"{path} holds several models (key prefixes {sorted(prefixes)})")
    prefix = prefixes.pop() if prefixes else ""
    return {k: c[len(prefix):] if c.startswith(prefix) else c for k, c in clean.items()}


def _detect_names(keys: Iterable[str]) -> str:
    diffusers = any(k.startswith(("condition_embedder.", "proj_out.")) or ".attn1." in k for k in keys)
    return "diffusers" if diffusers else "wan"


class Checkpoint:
    """A checkpoint opened for streaming; our names and shapes are known before any tensor is read.

    Attributes: ``files``; ``entry`` (training-checkpoint entry, ``""`` otherwise); ``names`` (``wan`` or
    ``diffusers``: the naming found); ``metadata`` (safetensors ``__metadata__`` merged over shards);
    ``shapes`` (our name -> shape); ``config`` (the Wan ``config.json`` beside the weights, ``{}`` if none).
    """

    def __init__(self, path: str | Path, checkpoint_key: str = "auto", fmt: str = "auto"):
        if fmt not in FORMATS:
            raise ValueError(f"checkpoint format must be one of {FORMATS}, got {fmt!r}")
        self.path, self.files = Path(path), checkpoint_files(path)
        self.metadata, self.entry, self._state = {}, "", None     # metadata: dict[str, str]
        if self.files[0].suffix == ".safetensors":
            raw = self._read_headers(checkpoint_key)
        else:
            self._state, self.entry = _select_state_dict(_torch_load(self.files[0]), checkpoint_key, self.files[0])
            raw = {k: tuple(v.shape) for k, v in self._state.items() if isinstance(v, Tensor)}
        plain = _strip_names(raw, self.path)
        self.names = _detect_names(plain.values()) if fmt == "auto" else fmt
        rename = diffusers_to_wan_key if self.names == "diffusers" else str
        self._ours = {k: rename(plain[k]) for k in raw}
        if len(set(self._ours.values())) != len(self._ours):
            raise ValueError(f"{self.path}: several keys map to the same parameter name")
        self.shapes = {self._ours[k]: shape for k, shape in raw.items()}
        self.config = read_config_json(self.files[0].parent / CONFIG_JSON)

    def _read_headers(self, checkpoint_key: str) -> dict[str, tuple[int, ...]]:
        if checkpoint_key != "auto":
            raise ValueError(f"checkpoint_key={checkpoint_key!r} but {self.path} is a plain safetensors "
                             "checkpoint; use 'auto'")
        raw = {}
        for f in self.files:
            try:
                with safe_open(f, "pt") as h:
                    self.metadata.update(h.metadata() or {})
                    raw.update({k: tuple(h.get_slice(k).get_shape()) for k in h.keys()})
            except SafetensorError as err:
                raise ValueError(f"{f} is not a readable safetensors file: {err}") from None
        return raw

    def describe(self) -> str:
        """``path (diffusers names, entry 'generator_ema')`` for messages."""
        return f"{self.path} ({self.names} names{f', entry {self.entry!r}' if self.entry else ''})"

    @staticmethod
    def _cast(t: Tensor, dtype: torch.dtype | None) -> Tensor:
        return t if dtype is None or not t.is_floating_point() else t.to(dtype)

    def tensors(self, dtype: torch.dtype | None = None, only: set[str] | None = None) -> Iterator[tuple[str, Tensor]]:
        """Yield ``(our name, tensor)`` one at a time, shard by shard; ``only`` restricts to these names."""
        if self._state is not None:
            for raw, name in self._ours.items():
                if only is None or name in only:
                    yield name, self._cast(self._state[raw], dtype)
            return
        for f in self.files:
            with safe_open(f, "pt") as h:
                for raw in h.keys():
                    if only is None or self._ours[raw] in only:
                        yield self._ours[raw], self._cast(h.get_tensor(raw), dtype)


def read_config_json(path: Path) -> dict:
    """A diffusers / official Wan ``config.json`` (``_class_name`` in :data:`CONFIG_JSON_FIELDS`), else ``{}``."""
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    return config if isinstance(config, dict) and config.get("_class_name") in CONFIG_JSON_FIELDS else {}


def stated_arch(config: Mapping, where: str) -> dict[str, tuple[str, object]]:
    """Our ModelConfig field -> ``(config.json key, value)`` for every architecture key ``config`` states.

    diffusers' ``out_channels: null`` means ``in_channels``. Raises ``ValueError`` (naming ``where``) for a key
    it does not know and for a value our DiT does not implement (an image-to-video model, another q/k norm).
    """
    cls = config["_class_name"]
    fields, fixed = CONFIG_JSON_FIELDS[cls], CONFIG_JSON_FIXED[cls]
    unknown = sorted(k for k in config if not k.startswith("_") and k not in fields and k not in fixed)
    if unknown:
        raise ValueError(f"{where}: {cls} config keys {unknown} are not understood by vidforce")
    unsupported = [f"{k}={config[k]!r} (vidforce implements {v!r})" for k, v in fixed.items()
                   if k in config and plain(config[k]) != plain(v)]
    if unsupported:
        raise ValueError(f"{where}: unsupported {cls} architecture: {', '.join(unsupported)}")
    stated = {f: (k, plain(config[k])) for k, f in fields.items() if k in config}
    if "out_dim" in stated and stated["out_dim"][1] is None:
        del stated["out_dim"]
        if "in_dim" in stated:
            stated["out_dim"] = ("out_channels (null: in_channels)", stated["in_dim"][1])
    return stated


def plain(value):
    """Tuples as lists, so that ``[1, 2, 2]`` from JSON equals ``(1, 2, 2)``."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:LIST_LIMIT])
    more = f", ... and {len(items) - LIST_LIMIT} more" if len(items) > LIST_LIMIT else ""
    return f"\n  {title} ({len(items)}): {shown}{more}"


def mismatch_error(source: str, expected: Mapping[str, tuple], found: Mapping[str, tuple],
                   strict: bool = True) -> CheckpointMismatchError | None:
    """The one error describing how ``found`` shapes differ from ``expected`` (None when they fit)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} expected {tuple(expected[k])} found {tuple(found[k])}"
             for k in expected if k in found and tuple(expected[k]) != tuple(found[k])]
    if not wrong and (not strict or not (missing or unexpected)):
        return None
    parts = [_listing(t, items) for t, items in (("missing", missing), ("unexpected", unexpected),
                                                  ("wrong shape", wrong)) if items]
    return CheckpointMismatchError(f"checkpoint {source} does not match the model:" + "".join(parts))


def load_into(model: nn.Module, path: str | Path, checkpoint_key: str = "auto", strict: bool = True,
              fmt: str = "auto", optional: Iterable[str] = ()) -> LoadReport:
    """Copy a checkpoint into ``model`` in place, one tensor at a time (cast to each parameter's dtype/device).

    Shapes are checked from headers before any tensor is read. ``strict`` raises on missing or unexpected
    keys, except the ``optional`` model keys a checkpoint may lack (they keep their initial values, e.g.
    ``WanModel.OPTIONAL_KEYS``); wrong shapes always raise. Returns the missing and unexpected keys.
    """
    ckpt = Checkpoint(path, checkpoint_key, fmt)
    target = model.state_dict()
    optional = set(optional) - set(ckpt.shapes)
    expected = {k: tuple(v.shape) for k, v in target.items() if k not in optional}
    err = mismatch_error(ckpt.describe(), expected, ckpt.shapes, strict)
    if err is not None:
        raise err
    with torch.no_grad():
        for name, tensor in ckpt.tensors(only=set(target)):
            target[name].copy_(tensor)
    return LoadReport([k for k in target if k not in ckpt.shapes], [k for k in ckpt.shapes if k not in target])


def config_metadata(model_cfg) -> dict[str, str]:
    """Safetensors metadata for our exports: the model config (``config.ModelConfig``) as JSON, paths left out."""
    fields = {k: v for k, v in vars(model_cfg).items() if k not in ("checkpoint", "checkpoint_key")}
    return {MODEL_CONFIG_KEY: json.dumps(fields)}


def metadata_model_config(metadata: Mapping[str, str]) -> dict | None:
    """The model config stored by :func:`config_metadata`, or None."""
    return json.loads(metadata[MODEL_CONFIG_KEY]) if MODEL_CONFIG_KEY in metadata else None


def infer_arch(sd: Mapping[str, Tensor | tuple], metadata: Mapping[str, str] | None = None) -> dict:
    """Architecture of a state dict with our names (values: tensors or shapes).

    ``num_heads`` is not in the weights: it comes from the metadata model config, else from the preset with the
    same ``dim`` and ``ffn_dim``, else None.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise ValueError(f"cannot infer the architecture: no {key!r} in the checkpoint")
        return tuple(sd[key].shape) if isinstance(sd[key], Tensor) else tuple(sd[key])

    dim, in_dim, *patch = shape("patch_embedding.weight")
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    arch = dict(dim=dim, ffn_dim=shape("blocks.0.ffn.0.weight")[0], num_layers=max(layers) + 1 if layers else 0,
                text_dim=shape("text_embedding.0.weight")[1], freq_dim=shape("time_embedding.0.weight")[1],
                in_dim=in_dim, out_dim=shape("head.head.weight")[0] // (patch[0] * patch[1] * patch[2]),
                patch_size=list(patch), cross_attn_norm="blocks.0.norm3.weight" in sd)
    stored = metadata_model_config(metadata or {}) or {}
    presets = [p["num_heads"] for p in MODEL_PRESETS.values() if (p["dim"], p["ffn_dim"]) == (dim, arch["ffn_dim"])]
    arch["num_heads"] = stored["num_heads"] if "num_heads" in stored else (presets[0] if presets else None)
    return arch


def save_safetensors(model_or_sd: nn.Module | Mapping[str, Tensor] | Iterable[tuple[str, Tensor]], path: str | Path,
                     metadata: Mapping | None = None, max_shard_bytes: int = 0, names: str = "wan") -> list[Path]:
    """Save a model, a state dict or a stream of ``(name, tensor)`` (our names) as ``path`` (``*.safetensors``).

    ``names``: ``wan`` (official = ours) or ``diffusers``. Atomic: tmp files, then ``os.replace``. With
    ``max_shard_bytes > 0`` and more than one shard: ``<stem>-0000i-of-0000N.safetensors`` plus
    ``<stem>.safetensors.index.json`` (``metadata.total_size``, ``weight_map``); one shard is held at a time.
    A missing parent directory is created; files get the usual ``0o666 & ~umask`` mode. Returns the files written.
    """
    path, rename = Path(path), _OUT_NAMES.get(names)
    if rename is None or path.suffix != ".safetensors":
        raise ValueError(f"save_safetensors: names must be one of {tuple(_OUT_NAMES)} (got {names!r}) and the "
                         f"output must end in .safetensors (got {path})")
    if path.is_dir():
        raise ValueError(f"{path} is a directory: name the .safetensors file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    items = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else model_or_sd
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    parts, shard, size, total, where = [], {}, 0, 0, {}
    try:
        for name, t in (items.items() if isinstance(items, Mapping) else items):
            key, nbytes = rename(name), t.numel() * t.element_size()
            if max_shard_bytes and shard and size + nbytes > max_shard_bytes:
                parts.append(_write_part(shard, path, len(parts), meta))
                shard, size = {}, 0
            shard[key], where[key] = t.detach().contiguous(), len(parts)
            size, total = size + nbytes, total + nbytes
        parts.append(_write_part(shard, path, len(parts), meta))
        if len(parts) == 1:
            os.replace(parts[0], path)
            return [path]
        finals = [path.with_name(f"{path.stem}-{i + 1:05d}-of-{len(parts):05d}.safetensors") for i in range(len(parts))]
        for tmp, final in zip(parts, finals):
            os.replace(tmp, final)
    finally:
        for tmp in parts:
            tmp.unlink(missing_ok=True)
    index = path.with_name(path.name + ".index.json")
    tmp = index.with_name(f".{index.name}.tmp")
    tmp.write_text(json.dumps({"metadata": {"total_size": total, **meta},
                               "weight_map": {k: finals[i].name for k, i in where.items()}}, indent=2))
    os.replace(tmp, index)
    return finals + [index]


def _write_part(shard: dict[str, Tensor], path: Path, i: int, meta: dict[str, str]) -> Path:
    tmp = path.with_name(f".{path.name}.part{i}.tmp")
    save_file(shard, str(tmp), metadata=meta or None)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)           # safetensors writes 0600; a plain file (what os.replace keeps) is not
    return tmp
