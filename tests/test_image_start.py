"""Image-to-video starts: the image is the codec's encoding, committed to the cache as clean context at frame 0,
and the chunks that follow attend to it; ``generate --image`` end to end; the size rule; unreadable files."""
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from vidforce import components, config
from vidforce.cli import main
from vidforce.image_start import encode_image, fit_image, read_image
from vidforce.models.build import build_generator
from vidforce.models.codecs.wan_vae import WanVAE
from vidforce.sampling import Sampler, refresh_cache
from vidforce.streaming import Streamer
from tests.models.helpers import tiny_arch, tiny_causal
from tests.test_generate import generate
from tests.test_streaming import OVERRIDES


def _streamer(cfg, codec=None, latent_hw=(8, 8)):
    torch.manual_seed(0)
    model = build_generator(cfg, "cpu", torch.float32).eval()
    return Streamer(model, codec or components.codec(cfg), components.text_encoder(cfg),
                    Sampler.from_config(cfg.schedule), latent_hw, 0)


def _image(colour, size=16):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
    image[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = colour
    return image


def test_the_first_latent_frame_is_the_codecs_encoding_written_as_clean_context():
    cfg = config.load(None, OVERRIDES)
    s = _streamer(cfg)
    image = _image((250, 30, 30))
    first = encode_image(s.codec, image)
    video = torch.from_numpy(image).permute(2, 0, 1)[None, None].float() / 127.5 - 1
    torch.testing.assert_close(first, s.codec.encode(video), rtol=0, atol=0)
    it = s.frames(13, [(0, "a red circle")], first)
    shown = next(it)
    assert np.array_equal(shown, image[None])                  # PixelCodec: the image itself, exactly
    assert torch.equal(s.kept[0], first)
    ref = s.model.new_cache(1, 8, 8, 13, "cpu", torch.float32)
    refresh_cache(s.model, first, ref, 0, s._text_kv("a red circle"), s.sampler)
    for a, b in zip(s.cache.k, ref.k):
        torch.testing.assert_close(a[:, :, s.cache.slot(0)], b[:, :, 0], rtol=0, atol=0)
    chunks = [len(c) for c in it]
    assert chunks == [3, 3, 3, 3] and s.stats.frames == 13      # the chunks start at frame 1: 1, 4, 7, 10


def test_the_first_chunk_changes_with_the_image():
    cfg = config.load(None, OVERRIDES)
    outs = []
    for colour in ((250, 30, 30), (30, 30, 250)):
        s = _streamer(cfg)
        it = s.frames(4, [(0, "a red circle")], encode_image(s.codec, _image(colour)))
        next(it)
        outs.append(next(it).astype(int))
    assert np.abs(outs[0] - outs[1]).mean() > 1


def test_a_switch_after_an_image_start_snaps_to_its_chunk_grid():
    from vidforce.models.codecs.pixel import PixelCodec
    from vidforce.streaming import switch_frames
    assert switch_frames([(0, "a"), (0.5, "b")], 8, PixelCodec(2), 3, offset=1) == [(0, "a"), (4, "b")]
    cfg = config.load(None, OVERRIDES + ["causal.window=9"])
    s = _streamer(cfg)
    it = s.frames(7, [(0, "a"), (4, "b")], encode_image(s.codec, _image((250, 30, 30))))
    frames = [next(it), next(it)]
    kept = dict(s.kept)
    frames += list(it)
    assert [len(f) for f in frames] == [1, 3, 3] and [w.frame for w in s.stats.switches] == [4]
    assert s.stats.switches[0].recached == 4                     # the image and the first chunk, re-encoded
    ref, text_kv = s.model.new_cache(1, 8, 8, 7, "cpu", torch.float32), s._text_kv("b")
    refresh_cache(s.model, kept[0], ref, 0, text_kv, s.sampler)                    # in their own chunks: {0}, {1, 2, 3}
    refresh_cache(s.model, torch.cat([kept[f] for f in (1, 2, 3)], dim=1), ref, 1, text_kv, s.sampler)
    for a, b in zip(s.cache.k, ref.k):
        torch.testing.assert_close(a[:, :, :4], b[:, :, :4], rtol=0, atol=0)


def test_with_the_wan_vae_the_image_is_its_causal_first_frame():
    torch.manual_seed(0)
    vae = WanVAE(dim=8, z_dim=12, latent_mean=(0.0,) * 12, latent_std=(1.0,) * 12).eval()
    model = tiny_causal(arch=tiny_arch(), frames_per_chunk=3, window=6)
    cfg = config.load(None, OVERRIDES)
    s = Streamer(model, vae, components.text_encoder(cfg), Sampler.from_config(cfg.schedule), (2, 2), 0)
    image = _image((250, 30, 30))
    first = encode_image(vae, image)
    assert first.shape == (1, 1, 12, 2, 2)
    torch.testing.assert_close(first, vae.encode(torch.from_numpy(image).permute(2, 0, 1)[None, None] / 127.5 - 1))
    assert [len(f) for f in s.frames(4, [(0, "a red circle")], first)] == [1, 12]     # 1 pixel frame, then 4 each


def test_the_size_rule_covers_then_centre_crops():
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 200                                         # the centre half is bright
    fitted, note = fit_image(wide, 16, 16)
    assert fitted.shape == (16, 16, 3) and fitted.min() > 150    # scaled to 32x16, the centre 16 columns kept
    assert note == "40x20 scaled to 32x16 and centre-cropped to the stream's 16x16"
    same, note = fit_image(wide, 20, 40)
    assert same is wide and note == "40x20, the stream's size"


def test_generate_from_an_image(tmp_path, capsys):
    path = tmp_path / "start.png"
    iio.imwrite(path, np.repeat(np.repeat(_image((250, 30, 30), 8), 4, 0), 4, 1))     # 32x32: scaled down
    assert main(generate(tmp_path, "--random-weights", "--image", str(path))) == 0
    out = capsys.readouterr().out
    assert f"start image: {path} (32x32 scaled to 16x16" in out and "wrote 10 frames" in out
    video = iio.imread(tmp_path / "o.mp4")
    expected, _ = fit_image(read_image(path), 16, 16)
    assert video.shape == (10, 16, 16, 3) and np.abs(video[0].astype(int) - expected).mean() < 12


@pytest.mark.parametrize("content,message", [(b"not an image", "is not a readable image"), (None, "--image not found")])
def test_an_unreadable_image_is_one_line_naming_it(tmp_path, capsys, monkeypatch, content, message):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setattr("vidforce.models.build.build_generator", lambda *a: pytest.fail("built the model"))
    assert main(generate(tmp_path, "--random-weights", "--image", str(path))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vidforce generate: error: ") and message in err[0]
    assert str(path) in err[0]
