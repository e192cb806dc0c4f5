import hashlib
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from vidforce.models.text import (
    PromptEmbeddingCache,
    TinyTextEncoder,
    UMT5TextEncoder,
    build_text_encoder,
    sinusoidal_positions,
)


def test_tiny_encoder_is_deterministic_and_zero_padded():
    enc = TinyTextEncoder(dim=16, text_len=8, seed=0)
    out = enc.encode(["A red ball!", "blue", ""])
    assert out.shape == (3, 8, 16)
    assert (out[0, :3].abs().sum(-1) > 0).all() and (out[0, 3:] == 0).all()
    assert (out[1, 1:] == 0).all() and (out[2] == 0).all()
    again = TinyTextEncoder(dim=16, text_len=8, seed=0).encode(["a RED, ball", "blue", ""])
    assert torch.equal(out, again)
    assert not torch.equal(out[0], enc.encode(["a red box"])[0])
    assert not torch.equal(out, TinyTextEncoder(dim=16, text_len=8, seed=1).encode(["A red ball!", "blue", ""]))


def test_tiny_encoder_tells_counts_apart():
    """Digits are words: the mini world's "2 balls" and "3 balls" must not share an embedding (they did when
    only letters were words, and the ball-world teacher could not learn the count)."""
    enc = TinyTextEncoder(dim=16, text_len=8)
    assert enc.word_ids("3 balls") == [enc.word_ids("3")[0], enc.word_ids("balls")[0]]
    two, three = enc.encode(["2 balls", "3 balls"])
    assert not torch.equal(two, three)
    torch.testing.assert_close(two[1], three[1])                   # the shared word "balls"


def test_tiny_encoder_adds_a_sinusoidal_position_code():
    enc = TinyTextEncoder(dim=16, text_len=8)
    twice = enc.encode(["ball ball"])[0]
    pos = sinusoidal_positions(8, 16)
    torch.testing.assert_close(twice[1] - twice[0], pos[1] - pos[0])
    assert torch.equal(pos[0], torch.tensor([0.0, 1.0] * 8))
    w1 = 10000.0 ** (-2 / 16)  # second frequency
    torch.testing.assert_close(pos[3, 2:4], torch.tensor([math.sin(3 * w1), math.cos(3 * w1)]))
    assert enc.encode(["one two three four five six seven eight nine ten"]).shape == (1, 8, 16)


def test_tiny_encoder_is_the_same_in_another_process():
    here = TinyTextEncoder(dim=8, text_len=4, seed=3).encode(["moving green square"])
    code = (
        "from vidforce.models.text import TinyTextEncoder;"
        "print(repr(TinyTextEncoder(dim=8, text_len=4, seed=3).encode(['moving green square']).flatten().tolist()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert here.flatten().tolist() == eval(result.stdout.strip().splitlines()[-1])


def test_cache_round_trip_pads_on_read_and_names_missing_prompts(tmp_path):
    path = tmp_path / "sub" / "prompts.safetensors"
    cache = PromptEmbeddingCache(path, text_len=6)
    a, b = torch.randn(3, 4), torch.randn(6, 4)
    cache.add("a cat", a)
    cache.add("a dog", b)
    cache.save()
    assert sorted(p.name for p in path.parent.iterdir()) == ["prompts.safetensors"]
    stored = load_file(path)
    assert torch.equal(stored[hashlib.sha1(b"a cat").hexdigest()], a)
    reopened = PromptEmbeddingCache.open(path, text_len=6)
    assert len(reopened) == 2 and "a dog" in reopened and "a cow" not in reopened
    out = reopened.get(["a dog", "a cat"])
    assert out.shape == (2, 6, 4)
    assert torch.equal(out[0], b) and torch.equal(out[1, :3], a) and (out[1, 3:] == 0).all()
    assert torch.equal(reopened.encode(["a cat"]), out[1:])
    with pytest.raises(KeyError, match="a cow"):
        reopened.get(["a cat", "a cow"])


def test_cache_rejects_bad_embeddings(tmp_path):
    cache = PromptEmbeddingCache(tmp_path / "c.safetensors", text_len=2)
    cache.add("x", torch.randn(3, 4))
    with pytest.raises(ValueError, match="dim 5 differs"):
        cache.add("y", torch.randn(1, 5))
    with pytest.raises(ValueError, match=r"\[len, D\]"):
        cache.add("y", torch.randn(4))
    with pytest.raises(ValueError, match="exceeds text_len=2"):
        cache.get(["x"])


def test_build_text_encoder_dispatches_and_names_the_field(tmp_path):
    assert isinstance(build_text_encoder("tiny", dim=8, text_len=4), TinyTextEncoder)
    with pytest.raises(ValueError, match="text.encoder"):
        build_text_encoder("clip")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        build_text_encoder("cache", path=tmp_path / "missing.safetensors")
    cache = PromptEmbeddingCache(tmp_path / "c.safetensors", text_len=4)
    cache.add("hi", torch.ones(1, 2))
    cache.save()
    loaded = build_text_encoder("cache", path=tmp_path / "c.safetensors", text_len=4)
    assert torch.equal(loaded.encode(["hi"])[0, 0], torch.ones(2))


WORDS = ["<pad>", "</s>", "<unk>", *"a red ball bounces on blue ground the cat".split()]


@pytest.fixture(scope="module")
def umt5_dir(tmp_path_factory):
    """A tiny random UMT5EncoderModel and a WordLevel tokenizer (EOS appended), saved offline."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    directory = tmp_path_factory.mktemp("umt5")
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(directory)
    config = transformers.UMT5Config(
        vocab_size=len(WORDS), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    transformers.UMT5EncoderModel(config).save_pretrained(directory)
    return directory


@torch.no_grad()
def test_umt5_zeroes_padding_and_matches_the_unpadded_forward(umt5_dir):
    enc = UMT5TextEncoder(umt5_dir, text_len=8, dtype=torch.float32)
    out = enc.encode(["a red ball", "the   cat &amp; ball"])
    assert out.shape == (2, 8, 16) and out.dtype == torch.float32
    assert (out[0, 4:] == 0).all() and (out[0, :4].abs().sum(-1) > 0).all()  # 3 words + EOS
    assert (out[1, 5:] == 0).all() and (out[1, :5].abs().sum(-1) > 0).all()  # "&amp;" -> "&" -> <unk>
    ids = torch.tensor([[WORDS.index(w) for w in ["a", "red", "ball", "</s>"]]])
    alone = enc.model(input_ids=ids).last_hidden_state[0]
    torch.testing.assert_close(out[0, :4], alone)
    built = build_text_encoder("umt5", local_dir=umt5_dir, text_len=8, dtype=torch.float32)
    torch.testing.assert_close(built.encode(["a red ball"]), out[:1])


def test_umt5_reports_missing_files_and_missing_transformers(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    with pytest.raises(FileNotFoundError, match="lacks: config.json, \\*.safetensors or \\*.bin"):
        UMT5TextEncoder(tmp_path)
    with pytest.raises(FileNotFoundError, match="directory not found"):
        UMT5TextEncoder(tmp_path / "nope")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"vidforce\[text\]"):
        UMT5TextEncoder(tmp_path)
