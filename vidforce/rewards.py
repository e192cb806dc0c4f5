"""Video rewards for reward-based post-training (GRPO): motion continuity from optical flow, the ball world's drift.

A video is uint8 ``[T, H, W, 3]`` RGB frames.

- :func:`motion_continuity`: the Farneback backward flows ``F_t`` (frame t -> t-1) of consecutive frames, computed
  as the drift metrics compute them (:func:`vidforce.diagnostics.drift.backward_flow` on ``flow_grey`` frames;
  magnitudes in px/frame on the ``FLOW_SIDE`` grid). Motion ``m = mean_t mean_p |F_t(p)|``; jerk
  ``j = mean_t mean_p |F_{t+1}(p) - F_t(p + F_{t+1}(p))|``, the change of each point's displacement along its own
  track (``F_t`` read where the point was in frame t, bilinear). Reward ``m - jerk_weight * j``: a frozen video
  scores 0, steady motion ``m > 0``, motion that reverses every frame ``m - 2 m < 0`` (with weight 1).
- :func:`drift_reward`: ``-mean_w D_w`` over the K-frame windows of :func:`vidforce.data.ball_metrics.scene_metrics`
  (each window against the video's own first window); the count is the one most often detected in the first
  window (training rollouts carry no prompt text), and a window with nothing measurable counts as ``D_CLIP``.
"""
from __future__ import annotations

import cv2
import numpy as np

from vidforce.data.ball_metrics import D_CLIP, MIN_AREA_FRACTION, detect, scene_metrics
from vidforce.diagnostics.drift import backward_flow, flow_grey, flow_motion

REWARDS = ("motion", "drift")


def _check(video: np.ndarray, min_frames: int) -> None:
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or len(video) < min_frames:
        raise ValueError(f"a reward needs uint8 [T >= {min_frames}, H, W, 3] frames, got {video.dtype} {video.shape}")


def track_jerk(prev_flow: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``F_{t+1}(p) - F_t(p + F_{t+1}(p))`` ``[h, w, 2]`` of two consecutive backward flows ``[h, w, 2]``."""
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    carried = cv2.remap(prev_flow, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
    return flow - carried


def motion_continuity(video: np.ndarray, jerk_weight: float = 1.0) -> float:
    """``m - jerk_weight * j`` of a video of at least 3 frames (module doc)."""
    _check(video, 3)
    grey = [flow_grey(f) for f in video]
    flows = [backward_flow(a, b) for a, b in zip(grey[:-1], grey[1:])]
    motion = np.mean([flow_motion(f) for f in flows])
    jerk = np.mean([flow_motion(track_jerk(a, b)) for a, b in zip(flows[:-1], flows[1:])])
    return float(motion - jerk_weight * jerk)


def drift_reward(video: np.ndarray, window: int, min_radius: float) -> float:
    """``-mean_w D_w`` of a ball-world video over windows of ``window`` frames (module doc)."""
    _check(video, window)
    min_area = MIN_AREA_FRACTION * np.pi * min_radius ** 2
    count = int(np.bincount(detect(video[:window], min_area).count).argmax())
    d = scene_metrics(video, count, window, min_radius=min_radius)["D"]
    return -float(np.where(np.isnan(d), D_CLIP, d).mean())


def video_rewards(videos: list[np.ndarray], kind: str, jerk_weight: float, window: int,
                  min_radius: float) -> np.ndarray:
    """The reward ``kind`` (``motion`` | ``drift``) of each video, ``[N]`` float64."""
    if kind == "motion":
        return np.array([motion_continuity(v, jerk_weight) for v in videos])
    elif kind == "drift":
        return np.array([drift_reward(v, window, min_radius) for v in videos])
    else:
        raise ValueError(f"objective.grpo.reward must be one of {REWARDS}, got {kind!r}")
