"""Data: the procedural mini world and its metrics, video clip datasets, prompt sources."""
from vidforce.data.mini_world import (Clip, Scene, Sprite, Truth, WorldSpec, export_mini_world,
                                      load_spec, make_clip, prompt_for, render, sample_scene,
                                      save_spec, scene_for_seed)
from vidforce.data.prompts import PromptSampler, load_prompts, parse_schedule
from vidforce.data.video import ClipSampler, VideoClipDataset
from vidforce.data.world_metrics import detect_sprites, world_metrics

__all__ = [
    "Clip", "ClipSampler", "PromptSampler", "Scene", "Sprite", "Truth", "VideoClipDataset",
    "WorldSpec", "detect_sprites", "export_mini_world", "load_prompts", "load_spec", "make_clip",
    "parse_schedule", "prompt_for", "render", "sample_scene", "save_spec", "scene_for_seed",
    "world_metrics",
]
