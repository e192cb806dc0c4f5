"""Teacher ODE trajectories for ODE-regression init: the command line of ``vidforce.recipes.ode_pairs``.

    python tools/make_ode_pairs.py CONFIG --out pairs.safetensors --num 1000 [--steps 48] [key=value ...]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vidforce.config import load  # noqa: E402
from vidforce.recipes.ode_pairs import make_ode_pairs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=1000, help="number of trajectories")
    p.add_argument("--steps", type=int, default=48, help="Euler steps of the ODE (before adding step-list sigmas)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.num < 1 or args.steps < 1 or args.batch < 1:
        p.error("--num, --steps and --batch must be >= 1")
    try:
        out = make_ode_pairs(load(args.config, args.overrides), args.out, args.num, args.steps, args.batch, args.seed)
    except (ValueError, FileNotFoundError) as err:
        print(f"make_ode_pairs: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.num} ODE trajectories to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
