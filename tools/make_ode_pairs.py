"""Teacher ODE trajectories for ODE-regression init: the command line of ``vidforce.recipes.ode_pairs``.

    python tools/make_ode_pairs.py CONFIG --out pairs.safetensors --num 1000 [key=value ...]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vidforce.recipes.ode_pairs import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
