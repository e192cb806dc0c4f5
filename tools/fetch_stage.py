"""Copy finished mini-world stage artifacts out of a device run (bf16 weights fit the 16 MB return limit).

    python tools/fetch_stage.py runs/mini-gpu $OUT teacher ode_init
Writes ``OUT/<stage>.safetensors`` (bf16, metadata kept) and ``OUT/<stage>.done.json``; restore them with
``--restore`` into a fresh run directory so later stages can start from them on another machine.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def fetch(run: Path, out: Path, stage: str) -> None:
    src = run / stage / "model.safetensors"
    with safe_open(src, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k).to(torch.bfloat16) for k in f.keys()}
    save_file(tensors, out / f"{stage}.safetensors", metadata=meta)
    shutil.copy(run / stage / "done.json", out / f"{stage}.done.json")


def restore(saved: Path, run: Path, stage: str) -> None:
    (run / stage).mkdir(parents=True, exist_ok=True)
    shutil.copy(saved / f"{stage}.safetensors", run / stage / "model.safetensors")
    shutil.copy(saved / f"{stage}.done.json", run / stage / "done.json")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[0] == "--restore":
        for s in args[3:]:
            restore(Path(args[1]), Path(args[2]), s)
    else:
        for s in args[2:]:
            fetch(Path(args[0]), Path(args[1]), s)
