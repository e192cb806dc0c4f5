"""Convert a Wan2.1 DiT checkpoint to safetensors with official (= vidforce) or diffusers names.

Inputs: official Wan2.1 (single file, shards + index json, or its folder), diffusers (file, folder or pipeline
folder), Self-Forcing / CausVid training ``.pt`` (``--checkpoint-key generator_ema``), vidforce exports.

    python tools/convert_checkpoint.py checkpoints/self_forcing_dmd.pt out/sf_dmd.safetensors
    python tools/convert_checkpoint.py wan_models/Wan2.1-T2V-14B out/wan14b.safetensors --to diffusers \\
        --dtype bf16 --max-shard-size 5GB

Same as ``vidforce convert``; both run ``vidforce.cli.main_convert``.
"""
import sys

from vidforce.cli import main_convert


def main() -> int:
    """Run the conversion; bad input (missing file, mismatching names) prints one line and exits 2."""
    try:
        return main_convert(sys.argv[1:])
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
