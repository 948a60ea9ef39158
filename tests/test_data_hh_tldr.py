"""Tests for the Table 1 data formats of prefopt.data: Anthropic HH (``hh``), TL;DR comparisons (``tldr``) and the
filtered TL;DR SFT set (``tldr_sft``) — SPEC §6.1 step 1.

Every row here is invented, written in exactly the real schemas (Anthropic/hh-rlhf ``helpful-base``,
openai/summarize_from_feedback ``comparisons``, UCL-DARK/openai-tldr-filtered) with words the tiny tokenizer knows,
and is loaded from local JSONL files through the same code a Hub dataset goes through after download.
"""

from __future__ import annotations

import json

import pytest

from prefopt.data import (
    FORMATS,
    HH_ASSISTANT,
    TLDR_PROMPT,
    DataError,
    load_prompts,
    load_records,
    tldr_prompt,
    tldr_split,
    tokenize_records,
)
from prefopt.tiny import build_tokenizer

H, A = "\n\nHuman:", "\n\nAssistant:"

WORDS = (
    "sky blue grass green red story fox ran park welcome color capital France Paris Lyon big small city cat dog "
    "sat mat SUBREDDIT TITLE POST TL DR r / ; cats dogs pets advice my lost found today help"
).split()


def _tok():
    return build_tokenizer(WORDS)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _hh(*turns):
    """An HH transcript from alternating human / assistant turns, in the hh-rlhf text form."""
    return "".join(f"{H if i % 2 == 0 else A} {turn}" for i, turn in enumerate(turns))


# --- Anthropic/hh-rlhf rows: {"chosen": transcript, "rejected": transcript} -----------------------------------

HH_LAST_TURN = {  # several shared turns, the last assistant turn differs
    "chosen": _hh("what color is the sky ?", "the sky is blue .", "and the grass ?", "the grass is green ."),
    "rejected": _hh("what color is the sky ?", "the sky is blue .", "and the grass ?", "the grass is red ."),
}
HH_EARLY = {  # differ in the first assistant turn, then go on: the response stops at the next "\n\nHuman:"
    "chosen": _hh("tell me a story .", "a fox ran in the park .", "thanks !", "you are welcome ."),
    "rejected": _hh("tell me a story .", "no .", "please ?", "no ."),
}
HH_SHARED_WORDS = {  # the common prefix runs into the responses ("Paris is "): backed off to the assistant cue
    "chosen": _hh("what is the capital of France ?", "Paris is big .  "),
    "rejected": _hh("what is the capital of France ?", "Paris is small ."),
}
HH_MIDDLE = {  # shared first exchange, differ in the second assistant turn, then one more exchange each
    "chosen": _hh("hello", "hello !", "tell me a story .", "a cat sat on the mat .", "thanks", "yes"),
    "rejected": _hh("hello", "hello !", "tell me a story .", "a dog ran .", "why ?", "no"),
}

PROMPT_LAST_TURN = f"{H} what color is the sky ?{A} the sky is blue .{H} and the grass ?{A}"
PROMPT_EARLY = f"{H} tell me a story .{A}"
PROMPT_SHARED_WORDS = f"{H} what is the capital of France ?{A}"
PROMPT_MIDDLE = f"{H} hello{A} hello !{H} tell me a story .{A}"


def _hh_good_rows():
    return [HH_LAST_TURN, HH_EARLY, HH_SHARED_WORDS, HH_MIDDLE]


@pytest.mark.parametrize("format", ["hh", "auto"])
def test_hh_transcripts_split_into_shared_prompt_and_first_differing_assistant_turn(tmp_path, format):
    path = _write_jsonl(tmp_path / "hh.jsonl", _hh_good_rows())
    records, report = load_records(path, format=format)
    assert report.format == "hh" and report.n_kept == 4 and report.bad == []
    assert [r.prompt for r in records] == [PROMPT_LAST_TURN, PROMPT_EARLY, PROMPT_SHARED_WORDS, PROMPT_MIDDLE]
    assert [r.completions for r in records] == [
        [" the grass is green .", " the grass is red ."],
        [" a fox ran in the park .", " no ."],  # not "... .\n\nHuman: thanks ! ..."
        [" Paris is big .", " Paris is small ."],  # surrounding whitespace stripped, one leading space
        [" a cat sat on the mat .", " a dog ran ."],
    ]
    for record in records:
        assert isinstance(record.prompt, str) and record.prompt.endswith(HH_ASSISTANT)
        assert not record.prompt.endswith(" ")
        assert all(c.startswith(" ") and not c.startswith("  ") and "\n\nHuman:" not in c for c in record.completions)
        assert record.rewards == [1.0, 0.0]
    assert [r.id for r in records] == [f"hh.jsonl:{i}" for i in range(4)]


HH_BAD = [
    ({"chosen": _hh("tell me a story .", "a fox ran ."), "rejected": _hh("tell me a story .", "") + " "},
     "empty response (rejected assistant turn is blank)"),
    ({"chosen": _hh("hello", " ", "tell me a story .", "no ."), "rejected": _hh("hello", "hello !", "why ?", "no .")},
     "empty response (chosen assistant turn is blank)"),
    ({"chosen": _hh("hello", "hello !"), "rejected": _hh("hello", "hello !  ")},
     "chosen and rejected responses are identical"),
    ({"chosen": _hh("hello", "hello !", "thanks", "yes"), "rejected": _hh("hello", "hello !", "why ?", "no")},
     "chosen and rejected responses are identical"),  # they part in a human turn: no differing assistant turn
    ({"chosen": f"{H} hello", "rejected": _hh("hello", "hello !")},
     "chosen transcript has no '\\n\\nAssistant:' turn"),
    ({"chosen": _hh("what color is the sky ?", "blue ."), "rejected": _hh("what color is the grass ?", "green .")},
     "chosen and rejected differ before their first '\\n\\nAssistant:': no shared prompt"),
    ({"chosen": _hh("hello", "hello !"), "rejected": ["hello"]},
     "rejected is a list, not an HH transcript string"),
]


def test_malformed_hh_rows_are_dropped_with_index_and_reason(tmp_path):
    rows = [HH_LAST_TURN]
    for bad, _ in HH_BAD:
        rows += [bad, HH_EARLY]
    records, report = load_records(_write_jsonl(tmp_path / "hh.jsonl", rows), format="hh", max_bad_fraction=1.0)
    assert report.bad == [(2 * i + 1, reason) for i, (_, reason) in enumerate(HH_BAD)]
    assert report.n_kept == len(records) == len(HH_BAD) + 1
    assert [r.id for r in records] == [f"hh.jsonl:{i}" for i in range(0, len(rows), 2)]
    summary = report.summary()
    assert "\n" not in summary and "row 2: empty response" in summary
    with pytest.raises(DataError) as info:  # the default bad fraction stops the run, in one line
        load_records(str(tmp_path / "hh.jsonl"), format="hh")
    assert "\n" not in str(info.value) and "row 2: empty response" in str(info.value)


def test_hh_rows_under_format_sft_keep_the_prompt_and_the_chosen_turn(tmp_path):
    blank_rejected = {"chosen": _hh("tell me a story .", "a fox ran ."), "rejected": _hh("tell me a story .", "")}
    path = _write_jsonl(tmp_path / "hh.jsonl", [HH_EARLY, HH_MIDDLE, blank_rejected])
    records, report = load_records(path, format="sft")
    assert report.format == "sft" and report.bad == []
    assert [(r.prompt, r.completions, r.rewards) for r in records] == [
        (PROMPT_EARLY, [" a fox ran in the park ."], [0.0]),
        (PROMPT_MIDDLE, [" a cat sat on the mat ."], [0.0]),
        (f"{H} tell me a story .{A}", [" a fox ran ."], [0.0]),  # only the chosen turn has to be usable
    ]


def test_load_prompts_reads_the_hh_prompt(tmp_path):
    prompts, report = load_prompts(_write_jsonl(tmp_path / "hh.jsonl", _hh_good_rows()))
    assert report.format == "hh" and prompts == [PROMPT_LAST_TURN, PROMPT_EARLY, PROMPT_SHARED_WORDS, PROMPT_MIDDLE]


def test_pairs_rows_with_a_prompt_column_are_still_pairs(tmp_path):
    row = {"prompt": f"{H} what is the capital of France ?{A}", "chosen": " Paris .", "rejected": " Lyon ."}
    records, report = load_records(_write_jsonl(tmp_path / "pairs.jsonl", [row]))
    assert report.format == "pairs" and records[0].completions == [" Paris .", " Lyon ."]
    hh_row = {"prompt": "what ?", **HH_EARLY}  # a prompt column means pairs, even with transcript responses
    _, report = load_records(_write_jsonl(tmp_path / "p2.jsonl", [hh_row]))
    assert report.format == "pairs"


# --- openai/summarize_from_feedback "comparisons" rows ---------------------------------------------------------


def _info(post_id, post="my cat lost a dog today .", title="help with my cat", subreddit="cats", **extra):
    return {"id": post_id, "post": post, "title": title, "subreddit": subreddit, "site": None, "article": None,
            **extra}


def _comparison(info, first, second, choice, batch="batch3"):
    return {
        "info": info,
        "summaries": [{"text": first, "policy": "sup2", "note": None}, {"text": second, "policy": "ref", "note": ""}],
        "choice": choice,
        "worker": "w1",
        "batch": batch,
        "split": "train",
        "extra": {"confidence": 7},
    }


TLDR_ROWS = [
    _comparison(_info("t3_a1"), " my cat lost a dog .", "a cat and a dog", 0),
    _comparison(_info("t3_a1"), "cat lost dog", "  my cat found a dog today .\n", 1),
    _comparison(_info("t3_b2", post="advice for my pets ?\nhelp !", title="pets", subreddit="dogs"),
                " help with pets", " dogs", 1),
]
TLDR_PROMPT_A = "SUBREDDIT: r/cats\nTITLE: help with my cat\nPOST: my cat lost a dog today .\nTL;DR:"
TLDR_PROMPT_B = "SUBREDDIT: r/dogs\nTITLE: pets\nPOST: advice for my pets ?\nhelp !\nTL;DR:"


def test_tldr_prompt_is_the_spec_format_with_fields_verbatim():
    assert TLDR_PROMPT == "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"
    assert tldr_prompt("cats", "help with my cat", "my cat lost a dog today .") == TLDR_PROMPT_A
    assert tldr_prompt("a", "{x}", " b \n") == "SUBREDDIT: r/a\nTITLE: {x}\nPOST:  b \n\nTL;DR:"


@pytest.mark.parametrize("format", ["tldr", "auto"])
def test_tldr_comparisons_put_the_chosen_summary_first(tmp_path, format):
    records, report = load_records(_write_jsonl(tmp_path / "cmp.jsonl", TLDR_ROWS), format=format)
    assert report.format == "tldr" and report.bad == []
    assert [r.prompt for r in records] == [TLDR_PROMPT_A, TLDR_PROMPT_A, TLDR_PROMPT_B]
    assert [r.completions for r in records] == [
        [" my cat lost a dog .", " a cat and a dog"],  # choice 0
        [" my cat found a dog today .", " cat lost dog"],  # choice 1: summaries[1] first, stripped, one space
        [" dogs", " help with pets"],
    ]
    assert all(r.rewards == [1.0, 0.0] for r in records)
    assert [r.id for r in records] == ["t3_a1", "t3_a1#1", "t3_b2"]  # info.id, repeated posts made unique


def test_malformed_tldr_rows_are_dropped_with_index_and_reason(tmp_path):
    news = _info("cnn-1", post=None, title=None, subreddit=None, site="news", article="a city river story .")
    bad = [
        (_comparison(news, " a city .", " a river .", 0), "missing post (a news-article row, not a Reddit post)"),
        (_comparison(_info("t3_c", post=None), " a .", " b .", 0), "missing post"),
        (_comparison(_info("t3_d"), " a cat .", " a dog .", 2), "choice is 2, not 0 or 1"),
        (_comparison(_info("t3_e"), " a cat .", "a cat . ", 1), "the two summaries are identical"),
        (_comparison(_info("t3_f"), " a cat .", "   ", 0), "empty response (summary 1 is blank)"),
        ({**_comparison(_info("t3_g"), " a .", " b .", 0), "summaries": [{"text": " a ."}]},
         "summaries is not a list of two {text, ...} objects"),
        (_comparison(_info("t3_h", subreddit=""), " a .", " b .", 0), "empty subreddit"),
    ]
    rows = [TLDR_ROWS[0]]
    for row, _ in bad:
        rows += [row, TLDR_ROWS[2]]
    records, report = load_records(_write_jsonl(tmp_path / "cmp.jsonl", rows), format="tldr", max_bad_fraction=1.0)
    assert report.bad == [(2 * i + 1, reason) for i, (_, reason) in enumerate(bad)]
    assert len(records) == len(bad) + 1 and records[0].id == "t3_a1"
    assert [r.id for r in records[1:]] == ["t3_b2"] + [f"t3_b2#{n}" for n in range(1, len(bad))]


def test_tldr_split_maps_our_splits_to_the_comparisons_splits():
    assert tldr_split("train") == "train"
    assert tldr_split("test") == "validation"
    for other in ("validation", "eval", None):
        with pytest.raises(DataError, match="'train' .*'test'"):
            tldr_split(other)


# --- UCL-DARK/openai-tldr-filtered style SFT rows ---------------------------------------------------------------

TLDR_SFT_ROWS = [
    {"id": "t3_s1", "subreddit": "cats", "title": "help with my cat", "post": "my cat lost a dog today .",
     "summary": " my cat lost a dog ."},
    {"id": "t3_s2", "subreddit": "dogs", "title": "pets", "post": "advice for my pets ?\nhelp !",
     "summary": "help with pets\n"},
    {"subreddit": "dogs", "title": "pets", "post": "my dog .", "summary": "dog"},  # no id: positional
]


@pytest.mark.parametrize("format", ["tldr_sft", "auto"])
def test_tldr_sft_rows_become_k1_records_with_the_tldr_prompt(tmp_path, format):
    records, report = load_records(_write_jsonl(tmp_path / "sft.jsonl", TLDR_SFT_ROWS), format=format)
    assert report.format == "tldr_sft" and report.bad == []
    assert [(r.id, r.prompt, r.completions, r.rewards) for r in records] == [
        ("t3_s1", TLDR_PROMPT_A, [" my cat lost a dog ."], [0.0]),
        ("t3_s2", TLDR_PROMPT_B, [" help with pets"], [0.0]),
        ("sft.jsonl:2", "SUBREDDIT: r/dogs\nTITLE: pets\nPOST: my dog .\nTL;DR:", [" dog"], [0.0]),
    ]


def test_malformed_tldr_sft_rows_and_explicit_format_checks(tmp_path):
    rows = [TLDR_SFT_ROWS[0], {**TLDR_SFT_ROWS[1], "post": None}, {**TLDR_SFT_ROWS[1], "summary": " "},
            {**TLDR_SFT_ROWS[1], "title": 3}]
    records, report = load_records(_write_jsonl(tmp_path / "sft.jsonl", rows), max_bad_fraction=1.0)
    assert report.format == "tldr_sft" and len(records) == 1
    assert report.bad == [(1, "missing post"), (2, "empty response (summary is blank)"),
                          (3, "title is a int, not a string")]
    with pytest.raises(DataError, match=r"format='tldr' needs columns \['info', 'summaries', 'choice'\]"):
        load_records(str(tmp_path / "sft.jsonl"), format="tldr")
    with pytest.raises(DataError, match=r"format='tldr_sft' needs columns"):
        load_records(_write_jsonl(tmp_path / "hh.jsonl", [HH_EARLY]), format="tldr_sft")
    assert {"hh", "tldr", "tldr_sft"} <= set(FORMATS)


def test_load_prompts_reads_tldr_prompts(tmp_path):
    prompts, report = load_prompts(_write_jsonl(tmp_path / "cmp.jsonl", TLDR_ROWS))
    assert report.format == "tldr" and prompts == [TLDR_PROMPT_A, TLDR_PROMPT_A, TLDR_PROMPT_B]


# --- tokenisation: text prompts, EOS appended, no chat template ------------------------------------------------


def test_hh_and_tldr_records_tokenise_as_text_with_eos_appended(tmp_path):
    tok = _tok()
    assert tok.chat_template  # the template exists but must not be applied to these text prompts
    hh, _ = load_records(_write_jsonl(tmp_path / "hh.jsonl", _hh_good_rows()))
    tldr, _ = load_records(_write_jsonl(tmp_path / "cmp.jsonl", TLDR_ROWS))
    sft, _ = load_records(_write_jsonl(tmp_path / "sft.jsonl", TLDR_SFT_ROWS))
    records = [*hh, *tldr, *sft]
    features, report = tokenize_records(records, tok, max_length=128, max_prompt_length=64)
    assert report.n_kept == len(records) and report.n_prompt_truncated == report.n_completion_truncated == 0
    for record, feature in zip(records, features):
        plain = tok(record.prompt, add_special_tokens=False).input_ids
        assert feature["prompt_ids"] == plain  # the text itself: no BOS, no "Human:" frame from the template
        assert tok.unk_token_id not in plain
        assert len(feature["completion_ids"]) == len(record.completions)
        for completion, ids in zip(record.completions, feature["completion_ids"]):
            assert ids == tok(completion, add_special_tokens=False).input_ids + [tok.eos_token_id]
            assert tok.unk_token_id not in ids
    assert tok.decode(features[0]["prompt_ids"]).endswith("Assistant :")
    assert tok.decode(features[4]["prompt_ids"]).startswith("SUBREDDIT : r / cats")
    assert tok.decode(features[4]["prompt_ids"]).endswith("TL ; DR :")


# --- Hub loading: data_dir passes through; offline failure is one fast line ------------------------------------


def test_data_dir_and_config_reach_datasets_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list(_hh_good_rows())

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records, report = load_records("Anthropic/hh-rlhf", data_dir="helpful-base", split="test", limit=2)
    assert calls == [("Anthropic/hh-rlhf", {"name": None, "split": "test", "data_dir": "helpful-base"})]
    assert report.format == "hh" and [r.prompt for r in records] == [PROMPT_LAST_TURN, PROMPT_EARLY]
    assert records[0].id == "Anthropic/hh-rlhf:0"
    load_records("openai/summarize_from_feedback", name="comparisons", split=tldr_split("test"), format="hh",
                 max_bad_fraction=1.0)
    assert calls[-1] == ("openai/summarize_from_feedback",
                         {"name": "comparisons", "split": "validation", "data_dir": None})


def test_offline_hh_hub_load_fails_with_a_one_line_data_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to fall back on
    with pytest.raises(DataError) as info:
        load_records("Anthropic/hh-rlhf", data_dir="helpful-base", format="hh")
    message = str(info.value)
    assert "\n" not in message
    assert "'Anthropic/hh-rlhf'" in message and "data_dir='helpful-base'" in message and "not found" in message
