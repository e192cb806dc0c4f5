"""Prompt files, the resumable prompt sampler, and streaming prompt schedules."""
import json

import pytest

from vidforce.data.prompts import PromptSampler, load_prompts, parse_schedule


def test_load_txt_and_jsonl(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a red circle\n\n  a blue square  \n")
    assert load_prompts(txt) == ["a red circle", "a blue square"]
    jsonl = tmp_path / "p.jsonl"
    lines = [json.dumps({"prompt": "a cat", "id": 1}), "", json.dumps({"prompt": "a dog"})]
    jsonl.write_text("\n".join(lines) + "\n")
    assert load_prompts(jsonl) == ["a cat", "a dog"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_prompts(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="empty.txt holds no prompts"):
        load_prompts(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_prompts(bad)
    bad.write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: 'prompt' must be a non-empty string"):
        load_prompts(bad)


def test_prompt_sampler_is_deterministic_covers_epochs_and_resumes():
    prompts = [f"p{i}" for i in range(7)]
    a, b = PromptSampler(prompts, seed=1), PromptSampler(prompts, seed=1)
    assert a.sample(5) == b.sample(5)
    first_epoch = PromptSampler(prompts, seed=1).sample(7)
    assert sorted(first_epoch) == sorted(prompts)
    state = a.state_dict()
    expected = a.sample(10)  # crosses into the next epoch
    resumed = PromptSampler(prompts, seed=1)
    resumed.load_state_dict(state)
    assert resumed.sample(4) + resumed.sample(6) == expected
    assert PromptSampler(prompts, seed=2).sample(7) != first_epoch
    ranks = [PromptSampler(prompts, seed=1, rank=r, world_size=2).sample(4) for r in range(2)]
    assert set(ranks[0] + ranks[1]) == set(prompts)


def test_parse_inline_json_and_file_schedules(tmp_path):
    expected = [(0.0, "a cat"), (5.0, "a dog"), (12.5, "a bird: flying")]
    assert parse_schedule("0:a cat; 5:a dog;12.5:a bird: flying") == expected
    assert parse_schedule("0: a cat\n5: a dog\n12.5: a bird: flying\n") == expected
    assert parse_schedule('[[0, "a cat"], [5, "a dog"], [12.5, "a bird: flying"]]') == expected
    objects = [{"start": s, "prompt": p} for s, p in expected]
    assert parse_schedule(json.dumps(objects)) == expected
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(objects))
    assert parse_schedule(path) == expected
    assert parse_schedule(str(path)) == expected
    assert parse_schedule("0:only one") == [(0.0, "only one")]


@pytest.mark.parametrize("text, message", [
    ("5:a cat;0:a dog", "start times must increase, got 0s after 5s"),
    ("0:a cat;5:a dog;5:a bird", "must increase"),
    ("1:a cat;5:a dog", "first prompt must start at 0s, not 1s"),
    ("0:a cat;-2:a dog", "'-2' must be finite and >= 0"),
    ("0:a cat;soon:a dog", "'soon' is not a number"),
    ("0:a cat;5:", "prompt at 5s is empty"),
    ("0:a cat;a dog", "'a dog' must look like 'SECONDS:prompt'"),
    ("  ;  ", "schedule is empty"),
    ("[[0, \"a\"], [1]]", "entry 1 must be"),
    ("[0, ", "invalid JSON"),
    ("0:a;nan:b", "must be finite"),
])
def test_bad_schedules_raise_naming_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


def test_missing_schedule_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        parse_schedule(str(tmp_path / "nope.json"))
