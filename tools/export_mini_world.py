"""Export mini-world clips as mp4 + captions + manifest.jsonl, loadable by VideoClipDataset.

    python tools/export_mini_world.py --out data/mini --num-clips 1000 --frames 64 --size 32
"""
import argparse

from vidforce.data.mini_world import WorldSpec, export_mini_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-clips", type=int, required=True)
    parser.add_argument("--frames", type=int, required=True, help="frames per clip")
    parser.add_argument("--size", type=int, default=32, help="frame height and width (even)")
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="clip i uses seed + i")
    args = parser.parse_args()
    scale = args.size / 32
    spec = WorldSpec(height=args.size, width=args.size, fps=args.fps,
                     size_range=(max(3, round(6 * scale)), max(3, round(10 * scale))),
                     speed_range=(0.5 * scale, 1.5 * scale))
    manifest = export_mini_world(args.out, args.num_clips, args.frames, spec, args.seed)
    print(f"wrote {args.num_clips} clips and {manifest}")


if __name__ == "__main__":
    main()
