"""The streaming speed levers as a config selects them (``stream.*``, ``codec.*``): what ``vidforce generate``
builds."""
import pytest
import torch
from safetensors.torch import save_file

from vidforce import components, config
from vidforce.generate import build
from vidforce.models.codecs import TAEHV
from vidforce.models.fp8 import Fp8Linear, supported
from vidforce.models.graphs import GraphedChunks
from vidforce.streaming import SideDecode

BASE = ["train.device=cpu", "train.precision=fp32", "data.latent_height=8", "data.latent_width=8",
        "causal.window=6", "causal.sink=3"]
WAN_LATENT = ["model.in_dim=16", "model.out_dim=16"]


def test_every_lever_is_off_by_default():
    cfg = config.load(None, BASE)
    assert (cfg.stream.fused_refresh, cfg.stream.cuda_graphs, cfg.stream.fp8) == (False, False, "off")
    assert cfg.stream.overlap_decode is False
    assert (cfg.codec.decode_buffers, cfg.codec.channels_last) == (False, False)
    parts = build(cfg, False)
    assert parts.runner is None and not parts.fused_refresh and not parts.overlap_decode
    assert parts.streamer(0).side is None
    assert not any(isinstance(m, Fp8Linear) for m in parts.model.modules())


@pytest.mark.skipif(supported("cpu", "row") is not None, reason=str(supported("cpu", "row")))
def test_build_wires_the_levers():
    cfg = config.load(None, BASE + ["stream.fused_refresh=true", "stream.cuda_graphs=true", "stream.fp8=row",
                                    "stream.overlap_decode=true"])
    parts = build(cfg, False)
    assert isinstance(parts.runner, GraphedChunks) and not parts.runner.capture      # CPU: eager static buffers
    assert parts.fused_refresh and any(isinstance(m, Fp8Linear) for m in parts.model.modules())
    streamer = parts.streamer(0)
    assert streamer.net is parts.runner and streamer.fused_refresh
    assert isinstance(streamer.side, SideDecode) and streamer.side.stream is None       # CPU: no second stream


def test_cuda_graphs_need_a_rolling_window():
    with pytest.raises(ValueError, match="stream.cuda_graphs needs a rolling causal.window"):
        config.load(None, ["stream.cuda_graphs=true"])
    with pytest.raises(ValueError, match="stream.fp8"):
        config.load(None, ["stream.fp8=int8"])


def test_codec_kind_taehv_loads_the_checkpoint(tmp_path):
    path = tmp_path / "taew2_1.safetensors"
    torch.manual_seed(0)
    saved = {k: v.contiguous() for k, v in TAEHV().state_dict().items()}
    save_file(saved, path)
    cfg = config.load(None, BASE + WAN_LATENT + ["codec.kind=taehv", f"codec.path={path}"])
    codec = components.codec(cfg)
    assert isinstance(codec, TAEHV) and codec.latent_channels == 16
    state = codec.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)   # the file's
    with pytest.raises(ValueError, match="codec.kind=taehv needs codec.path"):
        components.codec(config.load(None, BASE + WAN_LATENT + ["codec.kind=taehv"]))
    with pytest.raises(ValueError, match="latent channels"):
        components.codec(config.load(None, ["codec.kind=taehv", f"codec.path={path}"]))   # model.in_dim 12
