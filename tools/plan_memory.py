"""Planned weight + optimizer bytes per GPU of a config, LoRA shared base beside three full copies (meta device).

    python tools/plan_memory.py configs/wan14b/self_forcing_dmd_lora.yaml --gpus 1 [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vidforce.config import load  # noqa: E402
from vidforce.train.memory_plan import plan_memory  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--gpus", type=int, default=1, help="GPUs the ZeRO stages partition over")
    args = p.parse_args(argv)
    plans = {k: v.as_dict() for k, v in plan_memory(load(args.config, args.overrides), args.gpus).items()}
    print(json.dumps({"config": args.config, "gpus": args.gpus, **plans}, indent=2))
    return plans


if __name__ == "__main__":
    main()
