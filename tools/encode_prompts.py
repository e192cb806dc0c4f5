"""Fill or extend a prompt-embedding cache (safetensors keyed by sha1(prompt)) from a prompts file.

Prompts: a .txt file (one per line, blank lines skipped) or a .jsonl file (a "prompt" per line).
Prompts already in the cache are skipped, so re-running after an interruption continues.

  python tools/encode_prompts.py prompts.txt --out prompts_umt5.safetensors \
      --encoder umt5 --model-dir /ckpt/umt5-xxl-encoder --device cuda --batch-size 32
  python tools/encode_prompts.py prompts.jsonl --out prompts_tiny.safetensors \
      --encoder tiny --dim 64 --text-len 16
"""
import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from vidforce.models.text import PromptEmbeddingCache, TinyTextEncoder, UMT5TextEncoder

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def read_prompts(path: Path) -> list[str]:
    """Unique prompts of a .txt (one per line) or .jsonl ({"prompt": ...} per line) file, in order."""
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix != ".jsonl":
        return list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError(f"{path}:{number}: each jsonl line needs a string field 'prompt'")
        prompts.append(record["prompt"])
    return list(dict.fromkeys(prompts))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", type=Path, help=".txt (one prompt per line) or .jsonl with 'prompt'")
    parser.add_argument("--out", type=Path, required=True, help="cache file (.safetensors), created or extended")
    parser.add_argument("--encoder", choices=("umt5", "tiny"), required=True)
    parser.add_argument("--model-dir", type=Path, help="umt5: local UMT5EncoderModel directory")
    parser.add_argument("--tokenizer-dir", type=Path, help="umt5: tokenizer directory (default: --model-dir)")
    parser.add_argument("--text-len", type=int, default=512, help="max tokens per prompt (Wan: 512)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="umt5 compute dtype")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", type=int, default=64, help="tiny: embedding dim")
    parser.add_argument("--seed", type=int, default=0, help="tiny: table seed")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--save-every", type=int, default=0, help="also save every N batches (0: only at the end)")
    args = parser.parse_args(argv)
    if args.encoder == "umt5" and args.model_dir is None:
        parser.error("--encoder umt5 needs --model-dir")
    return args


def build_encoder(args: argparse.Namespace):
    """The encoder named by `--encoder` (both have `encode_unpadded`)."""
    if args.encoder == "umt5":
        return UMT5TextEncoder(args.model_dir, text_len=args.text_len, dtype=DTYPES[args.dtype],
                               device=args.device, tokenizer_dir=args.tokenizer_dir)
    elif args.encoder == "tiny":
        return TinyTextEncoder(dim=args.dim, text_len=args.text_len, seed=args.seed, device=args.device)
    else:
        raise ValueError(f"--encoder must be umt5 or tiny, got {args.encoder!r}")


def main(argv=None) -> None:
    args = parse_args(argv)
    prompts = read_prompts(args.prompts)
    cache = PromptEmbeddingCache(args.out, text_len=args.text_len)
    todo = [p for p in prompts if p not in cache]
    print(f"{len(prompts)} prompts, {len(prompts) - len(todo)} already in {args.out}, {len(todo)} to encode")
    if not todo:
        return
    encoder = build_encoder(args)
    batches = [todo[i : i + args.batch_size] for i in range(0, len(todo), args.batch_size)]
    for number, batch in enumerate(tqdm(batches, desc="encoding prompts", unit="batch"), start=1):
        for prompt, embedding in zip(batch, encoder.encode_unpadded(batch)):
            cache.add(prompt, embedding)
        if args.save_every and number % args.save_every == 0:
            cache.save()
    cache.save()
    print(f"wrote {len(cache)} embeddings to {args.out}")


if __name__ == "__main__":
    main()
