"""Video diagnostics: drift curves for any video (file or frame stream) and their reports."""
from vidforce.diagnostics.drift import DriftMeter, analyze_frames, analyze_video
from vidforce.diagnostics.reader import open_video
from vidforce.diagnostics.report import format_summary, log_wandb, write_report

__all__ = ["DriftMeter", "analyze_frames", "analyze_video", "format_summary", "log_wandb",
           "open_video", "write_report"]
