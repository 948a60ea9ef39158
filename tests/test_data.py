"""Tests for prefopt.data — loading, validation, tokenisation and collation of preference data (SPEC §1, §6, §9).

Fixture files are written here in the real schemas (HuggingFaceH4/ultrafeedback_binarized, the princeton-nlp on-policy
sets, our K-candidate rw JSONL, plain text pairs, SFT prompt/completion rows) with invented content in the tiny
tokenizer's vocabulary, and are loaded by path through the same code a Hub dataset goes through after download. Tokenizers are real
``PreTrainedTokenizerFast`` objects from ``prefopt.tiny`` in three BOS styles: Pythia (BOS only from the chat
template), Llama-3 (adds BOS to plain text and the template text starts with BOS too) and Qwen2.5 (no BOS token).
"""

from __future__ import annotations

import json

import pytest
import torch

from prefopt.data import (
    DataError,
    DataReport,
    PreferenceCollator,
    PreferenceRecord,
    TokenizeReport,
    load_prompts,
    load_records,
    tokenize_records,
)
from prefopt.tiny import HH_CHAT_TEMPLATE, build_tokenizer

WORDS = "sky blue green grass color capital France Paris Lyon city river story fox red cat mat sat dog park ran".split()


def _tok(**kwargs):
    return build_tokenizer(WORDS, **kwargs)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _write_json(path, rows):
    path.write_text(json.dumps(rows, indent=1))
    return str(path)


def _conv(user, assistant, system=None):
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _ultrafeedback_row(i, user="what is the color of the sky ?", chosen="the sky is blue .", rejected="green ."):
    """A row in the HuggingFaceH4/ultrafeedback_binarized schema (train_prefs / test_prefs)."""
    return {
        "prompt": user,
        "prompt_id": f"{i:064x}",
        "chosen": _conv(user, chosen),
        "rejected": _conv(user, rejected),
        "messages": _conv(user, chosen),
        "score_chosen": 8.5,
        "score_rejected": 3.0,
    }


def _princeton_row(i):
    """A row in the princeton-nlp/*-ultrafeedback(-armorm) schema: five on-policy samples and their ArmoRM scores."""
    user = "tell me a story ."
    samples = ["a red fox ran in the park .", "a cat sat .", "no .", "the dog ran .", "a fox and a dog ."]
    scores = [0.12, 0.05, -0.3, 0.02, 0.09]
    return {
        "prompt_id": f"pid-{i}",
        "prompt": user,
        "all_generated_responses": samples,
        "all_rm_scores": scores,
        "chosen": _conv(user, samples[0]),
        "rejected": _conv(user, samples[2]),
    }


def _text_pair(prompt="\n\nHuman: what is the capital of France ?\n\nAssistant:", chosen=" Paris .", rejected=" Lyon ."):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _rw_row(k=4):
    completions = [" Paris .", " Lyon .", " the capital is Paris .", " France ."][:k]
    return {"prompt": "\n\nHuman: what is the capital of France ?\n\nAssistant:", "completions": completions,
            "rewards": [1.5, -0.5, 2.0, 0.1][:k]}


def _sft_row(prompt="\n\nHuman: what is the capital of France ?\n\nAssistant:", completion=" Paris ."):
    return {"prompt": prompt, "completion": completion}


def _count(ids, token_id):
    return sum(1 for t in ids if t == token_id)


# ---------------------------------------------------------------------------------------------------------------
# Loading each schema
# ---------------------------------------------------------------------------------------------------------------


def test_ultrafeedback_binarized_rows_become_chat_pairs_with_scores(tmp_path):
    rows = [_ultrafeedback_row(0), _ultrafeedback_row(1, chosen="Paris .", rejected="Lyon .")]
    rows[1]["chosen"] = _conv("what is the capital of France ?", "Paris .", system="answer with a city .")
    rows[1]["rejected"] = _conv("what is the capital of France ?", "Lyon .", system="answer with a city .")
    rows[1]["prompt"] = "a string prompt that only duplicates the first user turn"
    records, report = load_records(_write_jsonl(tmp_path / "uf.jsonl", rows))

    assert report.format == "pairs" and (report.n_rows, report.n_kept, report.bad) == (2, 2, [])
    assert records[0] == PreferenceRecord(
        id=f"{0:064x}",
        prompt=[{"role": "user", "content": "what is the color of the sky ?"}],
        completions=["the sky is blue .", "green ."],
        rewards=[8.5, 3.0],
    )
    # The prompt is the shared conversation prefix (system turn included), never the string column.
    assert records[1].prompt == [{"role": "system", "content": "answer with a city ."},
                                 {"role": "user", "content": "what is the capital of France ?"}]
    assert records[1].completions == ["Paris .", "Lyon ."]


def test_princeton_rows_load_as_pairs_or_as_k_candidates(tmp_path):
    path = _write_json(tmp_path / "princeton.json", [_princeton_row(0), _princeton_row(1)])

    pairs, report = load_records(path)
    assert report.format == "pairs"
    assert pairs[0].id == "pid-0"
    assert pairs[0].prompt == [{"role": "user", "content": "tell me a story ."}]
    assert pairs[0].completions == ["a red fox ran in the park .", "no ."]
    assert pairs[0].rewards == [1.0, 0.0]  # no score_chosen / score_rejected columns

    candidates, report = load_records(path, format="princeton_rw")
    assert report.format == "princeton_rw"
    assert candidates[1].id == "pid-1"
    assert candidates[1].prompt == [{"role": "user", "content": "tell me a story ."}]
    assert candidates[1].completions == _princeton_row(1)["all_generated_responses"]
    assert candidates[1].rewards == pytest.approx([0.12, 0.05, -0.3, 0.02, 0.09])


def test_rw_jsonl_rows_keep_k_candidates_and_get_positional_ids(tmp_path):
    path = _write_jsonl(tmp_path / "hh_rw.jsonl", [_rw_row(4), _rw_row(4)])
    records, report = load_records(path)
    assert report.format == "rw"
    assert [r.id for r in records] == ["hh_rw.jsonl:0", "hh_rw.jsonl:1"]
    assert records[0].completions == _rw_row(4)["completions"]
    assert records[0].rewards == [1.5, -0.5, 2.0, 0.1]
    assert isinstance(records[0].prompt, str)
    records, _ = load_records(_write_jsonl(tmp_path / "k3.jsonl", [_rw_row(3), _rw_row(3)]))
    assert all(len(r.completions) == len(r.rewards) == 3 for r in records)


def test_text_pairs_from_json_list_with_and_without_scores(tmp_path):
    scored = dict(_text_pair(), score_chosen=2, score_rejected=-1.5)
    records, _ = load_records(_write_json(tmp_path / "hh.json", [_text_pair(), scored]))
    assert records[0].prompt == _text_pair()["prompt"]
    assert records[0].completions == [" Paris .", " Lyon ."]
    assert records[0].rewards == [1.0, 0.0]
    assert records[1].rewards == [2.0, -1.5] and all(isinstance(r, float) for r in records[1].rewards)


def test_assistant_turn_only_responses_take_the_prompt_column(tmp_path):
    answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    rows = [
        {"prompt": "what is the color of grass ?", "chosen": answer("green ."), "rejected": answer("blue .")},
        {"prompt": [{"role": "user", "content": "hello"}], "chosen": answer("hello !"), "rejected": answer("no .")},
    ]
    records, _ = load_records(_write_jsonl(tmp_path / "turns.jsonl", rows))
    assert records[0].prompt == [{"role": "user", "content": "what is the color of grass ?"}]
    assert records[0].completions == ["green .", "blue ."]
    assert records[1].prompt == [{"role": "user", "content": "hello"}]


def test_duplicate_prompt_ids_are_made_unique_in_row_order(tmp_path):
    rows = [_ultrafeedback_row(7), _ultrafeedback_row(7), _ultrafeedback_row(8)]
    records, _ = load_records(_write_jsonl(tmp_path / "dup.jsonl", rows))
    assert [r.id for r in records] == [f"{7:064x}", f"{7:064x}#1", f"{8:064x}"]


def test_limit_keeps_the_first_rows_before_validation(tmp_path):
    rows = [_text_pair(), _text_pair(), _text_pair(), dict(_text_pair(), rejected="  ")]
    records, report = load_records(_write_jsonl(tmp_path / "l.jsonl", rows), limit=3)
    assert (report.n_rows, report.n_kept, report.bad) == (3, 3, [])
    with pytest.raises(DataError, match="limit"):
        load_records(str(tmp_path / "l.jsonl"), limit=0)


def test_sft_prompt_completion_rows_are_detected_and_become_k1_records(tmp_path):
    rows = [
        _sft_row(),  # HH-style text prompt ending in the assistant cue
        _sft_row(prompt=[{"role": "user", "content": "what is the color of grass ?"}], completion="green ."),
        # TRL's conversational prompt-completion shape: the completion is one assistant turn, so the prompt is chat
        {"prompt": "hello", "completion": [{"role": "assistant", "content": "hello !"}], "prompt_id": "p2"},
    ]
    records, report = load_records(_write_jsonl(tmp_path / "sft.jsonl", rows))
    assert report.format == "sft" and (report.n_rows, report.n_kept, report.bad) == (3, 3, [])
    assert records[0] == PreferenceRecord("sft.jsonl:0", _sft_row()["prompt"], [" Paris ."], [0.0])
    assert records[1].prompt == [{"role": "user", "content": "what is the color of grass ?"}]
    assert records[1].completions == ["green ."] and records[1].rewards == [0.0]
    assert records[2] == PreferenceRecord("p2", [{"role": "user", "content": "hello"}], ["hello !"], [0.0])


def test_pairs_rows_under_format_sft_keep_only_the_chosen_response(tmp_path):
    rows = [
        _text_pair(),
        dict(_text_pair(), rejected=" Paris ."),  # identical responses: a bad pair, a fine SFT example
        {"prompt": "\n\nHuman: hello\n\nAssistant:", "chosen": " hello ."},  # no rejected at all
        _ultrafeedback_row(3),
    ]
    rows[3]["chosen"] = _conv("what is the capital of France ?", "Paris .", system="answer with a city .")
    rows[3]["rejected"] = _conv("what is the capital of France ?", "Lyon .", system="answer with a city .")
    path = _write_jsonl(tmp_path / "hh.jsonl", rows)

    sft, report = load_records(path, format="sft")
    assert report.format == "sft" and report.bad == []
    assert [r.completions for r in sft] == [[" Paris ."], [" Paris ."], [" hello ."], ["Paris ."]]
    assert all(r.rewards == [0.0] for r in sft)
    assert sft[0].prompt == _text_pair()["prompt"] and sft[2].prompt == "\n\nHuman: hello\n\nAssistant:"
    # A chat chosen conversation gives its prefix as the prompt (the string prompt column is ignored), as for pairs.
    assert sft[3].prompt == [{"role": "system", "content": "answer with a city ."},
                             {"role": "user", "content": "what is the capital of France ?"}]
    assert sft[3].id == f"{3:064x}"

    # The same file read as pairs keeps K = 2 and still rejects the bad pairs: K = 1 is for format sft only.
    pairs, report = load_records(path, max_bad_fraction=1.0)
    assert report.format == "pairs" and [i for i, _ in report.bad] == [1, 2]
    assert [len(r.completions) for r in pairs] == [2, 2]
    assert pairs[0].prompt == sft[0].prompt and pairs[1].prompt == sft[3].prompt


def test_format_sft_needs_a_completion_or_a_chosen_column(tmp_path):
    path = _write_jsonl(tmp_path / "rw.jsonl", [_rw_row()])
    with pytest.raises(DataError, match=r"format='sft' needs columns \['completion'\] \(or a pairs 'chosen'\)"):
        load_records(path, format="sft")
    sft_path = _write_jsonl(tmp_path / "sft.jsonl", [_sft_row()])
    with pytest.raises(DataError, match=r"format='pairs' needs columns \['chosen', 'rejected'\]"):
        load_records(sft_path, format="pairs")


def test_load_prompts_reads_the_training_prompt_of_any_format_and_bare_prompt_rows(tmp_path):
    chat = [{"role": "user", "content": "what is the color of the sky ?"}]
    bare = [{"prompt": "hello ?"}, {"prompt": chat}, {"prompt": "hello ?", "extra": 1}]
    prompts, report = load_prompts(_write_jsonl(tmp_path / "prompts.jsonl", bare))
    assert report.format == "prompts" and prompts == ["hello ?", chat, "hello ?"]  # duplicates are kept

    # UltraFeedback rows: the prompt training sees is the conversation prefix, not the string column.
    uf = [_ultrafeedback_row(0), _ultrafeedback_row(1)]
    prompts, report = load_prompts(_write_json(tmp_path / "uf.json", uf))
    assert report.format == "pairs" and prompts == [chat, chat]
    prompts, _ = load_prompts(_write_jsonl(tmp_path / "rw.jsonl", [_rw_row()]))
    assert prompts == [_rw_row()["prompt"]]
    # Bare prompt rows are for load_prompts only: training data must have responses.
    with pytest.raises(DataError, match="cannot tell the format"):
        load_records(str(tmp_path / "prompts.jsonl"))
    with pytest.raises(DataError, match="all 1 rows .* empty prompt"):
        load_prompts(_write_jsonl(tmp_path / "empty.jsonl", [{"prompt": " "}]))


# ---------------------------------------------------------------------------------------------------------------
# Format selection and source errors
# ---------------------------------------------------------------------------------------------------------------


def test_explicit_format_is_checked_against_the_columns(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [_text_pair()])
    with pytest.raises(DataError, match=r"format='rw' needs columns \['completions', 'rewards'\]"):
        load_records(path, format="rw")
    with pytest.raises(DataError, match="unknown data format 'dpo'"):
        load_records(path, format="dpo")
    odd = _write_jsonl(tmp_path / "odd.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"cannot tell the format .*\['answer', 'question'\]"):
        load_records(odd)


def test_missing_local_file_is_a_one_line_data_error(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError) as info:
        load_records(missing)
    assert "nope.jsonl" in str(info.value) and "\n" not in str(info.value)


def test_unloadable_hub_name_fails_with_a_one_line_data_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to fall back on
    with pytest.raises(DataError) as info:
        load_records("prefopt-test-nobody/no-such-dataset", split="train_prefs")
    message = str(info.value)
    assert "\n" not in message
    assert "'prefopt-test-nobody/no-such-dataset'" in message and "not found" in message
    assert "no such local file" in message and "train_prefs" in message


def test_empty_and_invalid_json_files_raise(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="has no rows"):
        load_records(str(tmp_path / "empty.jsonl"))
    (tmp_path / "broken.json").write_text('[{"prompt": "a",')
    with pytest.raises(DataError, match="not valid JSON"):
        load_records(str(tmp_path / "broken.json"))
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_records(_write_json(tmp_path / "x.csv", []))


# ---------------------------------------------------------------------------------------------------------------
# Malformed rows
# ---------------------------------------------------------------------------------------------------------------

BAD_PAIR_ROWS = [
    ({"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " yes ."}, "missing field 'rejected'"),
    (dict(_text_pair(), chosen=3), "non-string chosen response"),
    (dict(_text_pair(), rejected=""), "empty rejected response"),
    (dict(_text_pair(), chosen=" \n\t "), "empty chosen response"),
    (dict(_text_pair(), rejected=" Paris ."), "chosen and rejected responses are identical"),
    (dict(_text_pair(), score_chosen=float("nan"), score_rejected=1.0), "non-finite score_chosen"),
    (dict(_ultrafeedback_row(0), rejected=_conv("what is the color of grass ?", "green .")),
     "prompt mismatch between chosen and rejected"),
    (dict(_ultrafeedback_row(0), chosen=[{"role": "user", "content": "what is the color of the sky ?"}]),
     "last chosen message is from 'user', not the assistant"),
    (dict(_ultrafeedback_row(0), chosen=[{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]),
     "role 'robot'"),
    (dict(_text_pair(), chosen=[{"role": "assistant", "content": "x"}]), "both be strings or both be lists"),
    ([1, 2, 3], "row is a list, not an object"),
]

BAD_RW_ROWS = [
    (dict(_rw_row(), completions=[" Paris ."], rewards=[1.0]), "K = 1 completions; need at least 2"),
    (dict(_rw_row(), rewards=[1.0, 2.0]), "4 completions but 2 rewards"),
    (dict(_rw_row(), rewards=[1.0, float("inf"), 0.0, 0.0]), "non-finite reward 1"),
    (dict(_rw_row(), rewards=[1.0, "high", 0.0, 0.0]), "reward 1 is not a number"),
    (dict(_rw_row(), completions=[" Paris .", None, " a .", " b ."]), "non-string completion 1 response"),
    (dict(_rw_row(), prompt="   "), "empty prompt"),
    ({"completions": [" a .", " b ."], "rewards": [1, 0]}, "missing field 'prompt'"),
]


def _interleave(good, bad_rows):
    """Good rows with each bad row at an odd position; returns rows and {index: expected reason}."""
    rows, expected = [], {}
    for bad, reason in bad_rows:
        rows.append(good)
        expected[len(rows)] = reason
        rows.append(bad)
    rows.append(good)
    return rows, expected


BAD_SFT_ROWS = [
    (_sft_row(completion=""), "empty completion response"),
    (_sft_row(completion=" \n "), "empty completion response"),
    ({"completion": " Paris ."}, "missing field 'prompt'"),
    (_sft_row(prompt=""), "empty prompt"),
    ({"prompt": "hello ?"}, "missing field 'completion'"),
    (_sft_row(completion=7), "non-string completion response"),
    (_sft_row(completion=[{"role": "user", "content": "x"}]), "last completion message is from 'user'"),
    (_sft_row(completion=_conv("hi", "hello")), "completion has 2 messages"),
    (_sft_row(prompt=[{"role": "user"}]), "prompt message 0 is not a {role, content} object"),
    (dict(_text_pair(), chosen=" "), "empty chosen response"),  # a pairs row under format sft
]


@pytest.mark.parametrize("good, bad_rows", [(_text_pair(), BAD_PAIR_ROWS), (_rw_row(), BAD_RW_ROWS),
                                            (_sft_row(), BAD_SFT_ROWS)], ids=["pairs", "rw", "sft"])
def test_malformed_rows_are_dropped_with_index_and_reason(tmp_path, good, bad_rows):
    rows, expected = _interleave(good, bad_rows)
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))  # json writes NaN / Infinity tokens
    records, report = load_records(str(path), max_bad_fraction=1.0)

    assert [index for index, _ in report.bad] == sorted(expected)
    for index, reason in report.bad:
        assert expected[index] in reason, (index, reason)
    assert report.n_rows == len(rows) and report.n_kept == len(records) == len(rows) - len(expected)
    assert [r.id for r in records] == [f"data.jsonl:{i}" for i in range(len(rows)) if i not in expected]
    assert str(len(expected)) in report.summary() and "\n" not in report.summary()


def test_invalid_jsonl_line_is_a_malformed_row_at_its_index(tmp_path):
    path = tmp_path / "lines.jsonl"
    path.write_text(json.dumps(_text_pair()) + "\n" + '{"prompt": "a", chosen\n' + json.dumps(_text_pair()) + "\n")
    records, report = load_records(str(path), max_bad_fraction=0.5)
    assert len(records) == 2
    assert report.bad == [(1, report.bad[0][1])] and "invalid JSON on line 2" in report.bad[0][1]


def test_too_many_malformed_rows_raise_one_line_with_the_first_ones(tmp_path):
    rows = [_text_pair() for _ in range(10)]
    rows[3] = dict(_text_pair(), rejected="")
    rows[7] = dict(_text_pair(), chosen=" Lyon .")
    path = _write_jsonl(tmp_path / "ten.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_records(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"2 of 10 rows in {path} are malformed (> max_bad_fraction=0.01)")
    assert "row 4: empty rejected response; row 8: chosen and rejected responses are identical" in message
    assert message.endswith("fix the data or raise data.max_bad_fraction")

    records, report = load_records(path, max_bad_fraction=0.2)  # 2/10 is not > 0.2
    assert len(records) == 8 and [i for i, _ in report.bad] == [3, 7]
    with pytest.raises(DataError, match="all 2 rows"):
        load_records(_write_jsonl(tmp_path / "all_bad.jsonl", [rows[3], rows[7]]), max_bad_fraction=1.0)


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------------------------

CHAT = PreferenceRecord("c", [{"role": "user", "content": "what is the color of the sky ?"}],
                        ["the sky is blue .", "green ."], [1.0, 0.0])
TEXT = PreferenceRecord("t", "\n\nHuman: what is the capital of France ?\n\nAssistant:",
                        [" Paris .", " Lyon ."], [2.0, 1.0])


def test_llama3_like_tokenizer_gives_exactly_one_bos_for_chat_and_text():
    tok = _tok(add_bos_token=True)  # adds BOS to plain text AND its chat template text starts with <bos>
    bos = tok.bos_token_id
    rendered = tok.apply_chat_template(CHAT.prompt, add_generation_prompt=True, tokenize=False)
    assert _count(tok(rendered).input_ids[:2], bos) == 2  # the trap: naive tokenisation doubles BOS

    features, report = tokenize_records([CHAT, TEXT], tok, max_length=64, max_prompt_length=32)
    assert report.bos_policy == "prepend"
    for feature in features:
        assert feature["prompt_ids"][0] == bos and _count(feature["prompt_ids"], bos) == 1
        assert all(_count(c, bos) == 0 for c in feature["completion_ids"])
    # A text prompt that already starts with the BOS token is not given a second one.
    literal = PreferenceRecord("l", "<bos>\n\nHuman: hello\n\nAssistant:", [" hello .", " no ."], [1.0, 0.0])
    (feature,), _ = tokenize_records([literal], tok, max_length=64, max_prompt_length=32)
    assert feature["prompt_ids"][0] == bos and _count(feature["prompt_ids"], bos) == 1


def test_pythia_like_tokenizer_keeps_the_template_bos_and_adds_none_to_text():
    tok = _tok()  # has a BOS token but does not add it to plain text
    bos = tok.bos_token_id
    (chat, text), report = tokenize_records([CHAT, TEXT], tok, max_length=64, max_prompt_length=32)
    assert report.bos_policy == "keep"
    assert chat["prompt_ids"][0] == bos and _count(chat["prompt_ids"], bos) == 1
    assert text["prompt_ids"] == tok(TEXT.prompt, add_special_tokens=False).input_ids
    assert bos not in text["prompt_ids"]


@pytest.mark.parametrize("add_bos_token", [False, True], ids=["pythia-like", "llama-like"])
def test_duplicated_template_bos_collapses_to_one(add_bos_token):
    tok = _tok(add_bos_token=add_bos_token, chat_template="{{ bos_token }}" + HH_CHAT_TEMPLATE)
    rendered = tok.apply_chat_template(CHAT.prompt, add_generation_prompt=True, tokenize=False)
    assert rendered.startswith("<bos><bos>")
    (feature,), _ = tokenize_records([CHAT], tok, max_length=64, max_prompt_length=32)
    assert feature["prompt_ids"][0] == tok.bos_token_id and _count(feature["prompt_ids"], tok.bos_token_id) == 1


def test_qwen_like_tokenizer_without_bos_gets_none():
    tok = _tok(with_bos=False)
    assert tok.bos_token_id is None
    (chat, text), report = tokenize_records([CHAT, TEXT], tok, max_length=64, max_prompt_length=32)
    assert report.bos_policy == "none"
    rendered = tok.apply_chat_template(CHAT.prompt, add_generation_prompt=True, tokenize=False)
    assert chat["prompt_ids"] == tok(rendered, add_special_tokens=False).input_ids
    assert text["prompt_ids"] == tok(TEXT.prompt, add_special_tokens=False).input_ids
    assert text["completion_ids"][0][-1] == tok.eos_token_id


def test_chat_completion_is_the_assistant_turn_text_and_joins_back_to_the_full_conversation():
    tok = _tok()
    (feature,), _ = tokenize_records([CHAT], tok, max_length=64, max_prompt_length=32)
    for completion, ids in zip(CHAT.completions, feature["completion_ids"]):
        full = tok.apply_chat_template([*CHAT.prompt, {"role": "assistant", "content": completion}], tokenize=False)
        assert feature["prompt_ids"] + ids == tok(full, add_special_tokens=False).input_ids
        assert tok.decode(ids) == f"{completion} <eos>"  # the template's end-of-turn, no extra EOS
        assert _count(ids, tok.eos_token_id) == 1
    assert feature["index"] == 0 and feature["id"] == "c" and feature["rewards"] == [1.0, 0.0]


def test_text_completion_gets_eos_appended():
    tok = _tok()
    (feature,), _ = tokenize_records([TEXT], tok, max_length=64, max_prompt_length=32)
    for completion, ids in zip(TEXT.completions, feature["completion_ids"]):
        assert ids == tok(completion, add_special_tokens=False).input_ids + [tok.eos_token_id]


def test_truncation_cuts_prompt_on_the_left_keeping_bos_and_completions_on_the_right():
    tok = _tok(add_bos_token=True)
    long_prompt = "\n\nHuman: tell me a story of a red fox and a dog in the park .\n\nAssistant:"
    record = PreferenceRecord("r", long_prompt, [" a red fox ran in the park and the dog sat .", " no ."], [1.0, 0.0])
    full_prompt = [tok.bos_token_id] + tok(long_prompt, add_special_tokens=False).input_ids
    full_long = tok(record.completions[0], add_special_tokens=False).input_ids + [tok.eos_token_id]
    max_prompt_length, max_length = 6, 12
    assert len(full_prompt) > max_prompt_length and len(full_long) > max_length - max_prompt_length

    short = PreferenceRecord("s", "hello ?", [" yes .", " no ."], [1.0, 0.0])  # fits: nothing to cut
    features, report = tokenize_records([record, short], tok, max_length=max_length, max_prompt_length=max_prompt_length)
    feature = features[0]
    assert feature["prompt_ids"] == [tok.bos_token_id] + full_prompt[-(max_prompt_length - 1):]
    assert tok.decode(feature["prompt_ids"][-2:]) == "Assistant :"  # the end of the prompt survives
    assert feature["completion_ids"][0] == full_long[: max_length - max_prompt_length]  # the start survives
    assert feature["completion_ids"][1] == tok(" no .", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert (report.n_prompt_truncated, report.n_completion_truncated, report.n_dropped) == (1, 1, 0)
    assert all(len(f["prompt_ids"]) + len(c) <= max_length for f in features for c in f["completion_ids"])
    assert features[1]["prompt_ids"] == [tok.bos_token_id] + tok("hello ?", add_special_tokens=False).input_ids
    assert "1 prompts cut on the left" in report.summary()


def test_prompt_truncation_without_bos_keeps_the_last_tokens():
    tok = _tok(with_bos=False)
    full = tok(TEXT.prompt, add_special_tokens=False).input_ids
    (feature,), report = tokenize_records([TEXT], tok, max_length=8, max_prompt_length=4)
    assert feature["prompt_ids"] == full[-4:]
    assert report.n_prompt_truncated == 1 and report.n_completion_truncated == 0


def test_records_with_an_empty_completion_are_dropped_and_indices_kept():
    # A template that renders the assistant turn without its content: the completion text is empty.
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '\n\nHuman: ' + m['content'] }}"
                "{% elif m['role'] == 'assistant' %}{{ '\n\nAssistant:' }}{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}{{ '\n\nAssistant:' }}{% endif %}")
    tok = _tok(chat_template=template)
    features, report = tokenize_records([CHAT, TEXT], tok, max_length=64, max_prompt_length=32)
    assert [f["index"] for f in features] == [1] and features[0]["id"] == "t"
    assert report.n_dropped == 1 and report.dropped[0][0] == 0 and report.n_kept == 1
    with pytest.raises(DataError, match="all 1 records were dropped"):
        tokenize_records([CHAT], tok, max_length=64, max_prompt_length=32)


def test_tokenisation_errors_are_data_errors():
    with pytest.raises(DataError, match="has no chat template; use text prompts or a tokenizer with one"):
        tokenize_records([CHAT], _tok(chat_template=None), max_length=64, max_prompt_length=32)
    tokenize_records([TEXT], _tok(chat_template=None), max_length=64, max_prompt_length=32)  # text needs none
    with pytest.raises(DataError, match=r"max_prompt_length \(64\) must be < max_length \(64\)"):
        tokenize_records([TEXT], _tok(), max_length=64, max_prompt_length=64)
    # The generation prompt says "Bot:" but the assistant turn "Assistant:": the prompt is no prefix of the turn.
    tok = _tok(chat_template=HH_CHAT_TEMPLATE.replace("{{ '\n\nAssistant:' }}", "{{ '\n\nBot:' }}"))
    assert tok.chat_template != HH_CHAT_TEMPLATE
    with pytest.raises(DataError, match="does not render the prompt as a prefix"):
        tokenize_records([CHAT], tok, max_length=64, max_prompt_length=32)


def test_sft_records_tokenise_and_collate_with_k_equal_one(tmp_path):
    rows = [_sft_row(), _sft_row(prompt=[{"role": "user", "content": "what is the color of grass ?"}],
                                 completion="green grass .")]
    records, _ = load_records(_write_jsonl(tmp_path / "sft.jsonl", rows))
    tok = _tok(add_bos_token=True)
    features, report = tokenize_records(records, tok, max_length=64, max_prompt_length=32)
    assert report.n_kept == 2 and all(len(f["completion_ids"]) == 1 and f["rewards"] == [0.0] for f in features)
    text, chat = features
    # SPEC §6.1 step 2: the response plus EOS is the target; chat: the template's assistant turn (its <eos> included).
    assert text["completion_ids"][0] == tok(" Paris .", add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert tok.decode(chat["completion_ids"][0]) == "green grass . <eos>"
    assert chat["prompt_ids"][0] == tok.bos_token_id and _count(chat["prompt_ids"], tok.bos_token_id) == 1

    batch = PreferenceCollator(pad_token_id=tok.pad_token_id)(features)
    longest = max(len(f["prompt_ids"]) + len(f["completion_ids"][0]) for f in features)
    assert batch["input_ids"].shape == batch["completion_mask"].shape == (2, longest)
    assert batch["rewards"].shape == (2, 1) and batch["rewards"].tolist() == [[0.0], [0.0]]
    assert batch["index"].tolist() == [0, 1]
    for row, feature in enumerate(features):  # row b is record b's only completion
        ids = batch["input_ids"][row]
        assert ids[batch["completion_mask"][row].bool()].tolist() == feature["completion_ids"][0]
        assert ids[: len(feature["prompt_ids"])].tolist() == feature["prompt_ids"]
    with pytest.raises(ValueError, match=r"K in \[1, 2\]"):  # an SFT example and a pair never share a batch
        PreferenceCollator(0)([_feature(0, [1], [[3]], [0.0]), _feature(1, [1], [[3], [4]], [1.0, 0.0])])


# ---------------------------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------------------------


def _feature(index, prompt, completions, rewards, **extra):
    return {"index": index, "id": str(index), "prompt_ids": prompt, "completion_ids": completions,
            "rewards": rewards, **extra}


def test_collator_pads_right_in_record_major_order():
    features = [
        _feature(4, [10, 11, 12], [[20], [21, 22, 23]], [1.0, 0.0]),
        _feature(9, [13], [[24, 25], [26]], [0.5, 2.5]),
    ]
    batch = PreferenceCollator(pad_token_id=2)(features)
    assert set(batch) == {"input_ids", "attention_mask", "completion_mask", "rewards", "index"}
    assert batch["input_ids"].tolist() == [
        [10, 11, 12, 20, 2, 2],
        [10, 11, 12, 21, 22, 23],
        [13, 24, 25, 2, 2, 2],
        [13, 26, 2, 2, 2, 2],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6, [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert batch["completion_mask"].tolist() == [
        [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0]]
    assert batch["rewards"].dtype == torch.float32 and batch["rewards"].tolist() == [[1.0, 0.0], [0.5, 2.5]]
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [4, 9]


def test_completion_mask_decodes_back_to_each_completion(tmp_path):
    rows = [_ultrafeedback_row(0), _ultrafeedback_row(1, user="what is the capital of France ?",
                                                       chosen="the capital is Paris .", rejected="Lyon .")]
    records, _ = load_records(_write_jsonl(tmp_path / "uf.jsonl", rows))
    tok = _tok(add_bos_token=True)
    features, _ = tokenize_records(records, tok, max_length=64, max_prompt_length=32)
    # pad = EOS (a common setting): masks must come from lengths, not from comparing with the pad id.
    batch = PreferenceCollator(pad_token_id=tok.eos_token_id)(features)
    assert batch["input_ids"].shape[0] == 4
    for row in range(4):
        record = records[row // 2]
        ids = batch["input_ids"][row]
        completion = ids[batch["completion_mask"][row].bool()].tolist()
        assert tok.decode(completion, skip_special_tokens=True) == record.completions[row % 2]
        assert completion[-1] == tok.eos_token_id
        prompt_len = int(batch["attention_mask"][row].sum()) - len(completion)
        assert ids[:prompt_len].tolist() == features[row // 2]["prompt_ids"]
        assert int(batch["completion_mask"][row].sum()) == len(features[row // 2]["completion_ids"][row % 2])


def test_collator_ref_logps_all_or_none():
    a = _feature(0, [1], [[3], [4]], [1.0, 0.0], ref_logps=[-1.5, -2.0])
    b = _feature(1, [1], [[5], [6]], [1.0, 0.0], ref_logps=[-0.5, -3.0])
    batch = PreferenceCollator(0)([a, b])
    assert batch["ref_logps"].dtype == torch.float32 and batch["ref_logps"].tolist() == [[-1.5, -2.0], [-0.5, -3.0]]
    assert "ref_logps" not in PreferenceCollator(0)([_feature(0, [1], [[3], [4]], [1.0, 0.0])])
    with pytest.raises(ValueError, match="ref_logps present in 1 of 2 features"):
        PreferenceCollator(0)([a, _feature(1, [1], [[5], [6]], [1.0, 0.0])])
    with pytest.raises(ValueError, match="ref_logps"):
        PreferenceCollator(0)([dict(a, ref_logps=[-1.0])])


def test_collator_rejects_mixed_k_and_bad_inputs():
    pair = _feature(0, [1], [[3], [4]], [1.0, 0.0])
    triple = _feature(1, [1], [[3], [4], [5]], [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"same number of completions K, got K in \[2, 3\]"):
        PreferenceCollator(0)([pair, triple])
    with pytest.raises(ValueError, match="rewards"):
        PreferenceCollator(0)([dict(pair, rewards=[1.0])])
    with pytest.raises(ValueError):
        PreferenceCollator(0)([])
    with pytest.raises(ValueError, match="pad_token_id"):
        PreferenceCollator(None)
    assert PreferenceCollator(0)([triple])["input_ids"].shape == (3, 2)


def test_reports_are_dataclasses_with_one_line_summaries():
    report = DataReport(source="x.jsonl", n_rows=3, n_kept=2, bad=[(1, "empty chosen response")], format="pairs")
    assert report.summary() == "x.jsonl [pairs]: kept 2 of 3 rows, dropped 1 malformed (row 2: empty chosen response)"
    tok_report = TokenizeReport(n_records=2, n_kept=2, bos_policy="none")
    assert "\n" not in tok_report.summary() and "2 of 2" in tok_report.summary()


def test_an_empty_sampled_candidate_is_kept_in_rw_rows_and_is_eos_alone(tmp_path):
    """A K-candidate row comes from sampling: a model that emits EOS at once produced a real (bad) candidate, which
    the reward model scores. Only human-written pairs treat an empty side as malformed (SPEC §6.1 step 1)."""
    path = tmp_path / "rw.jsonl"
    path.write_text(json.dumps(dict(_rw_row(), completions=[" Paris .", "", " a .", " b ."])) + "\n")
    records, report = load_records(str(path))
    assert report.bad == [] and records[0].completions[1] == ""
    tokenizer = build_tokenizer(["Paris"])
    examples, _ = tokenize_records(records, tokenizer, max_length=64, max_prompt_length=32)
    assert examples[0]["completion_ids"][1] == [tokenizer.eos_token_id]


def test_format_constants_are_derived_from_the_one_registry():
    from prefopt import data
    from prefopt.errors import DataError as FamilyError, PrefoptError

    assert DataError is FamilyError and issubclass(DataError, (PrefoptError, ValueError))
    assert data.FORMATS == ("auto", "pairs", "rw", "princeton_rw", "sft", "hh", "tldr", "tldr_sft")
    assert data.AUTO_ORDER == ("rw", "hh", "pairs", "tldr", "tldr_sft", "sft")  # hh before pairs: both have chosen
    assert data.REQUIRED_COLUMNS == {name: spec.required for name, spec in data.FORMAT_SPECS.items()
                                     if not spec.prompts_only}
    assert data.SFT_PAIR_COLUMNS == ("chosen",)
    assert [name for name, spec in data.FORMAT_SPECS.items() if spec.prompts_only] == ["prompts"]


# ---------------------------------------------------------------------------------------------------------------
# Mixed K, degenerate pairs after truncation, 1-based row numbers (issue "Nothing lost, nothing stale", 5 and 10)
# ---------------------------------------------------------------------------------------------------------------


def test_mixed_k_in_one_rw_source_is_one_data_error_naming_the_file_rows_and_ks(tmp_path):
    rows = [_rw_row(4) for _ in range(96)]
    rows.insert(36, dict(_rw_row(4), completions=[*_rw_row(4)["completions"], " city ."],
                         rewards=[*_rw_row(4)["rewards"], 0.0]))  # row 37 of the file has K = 5
    path = _write_jsonl(tmp_path / "rw.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_records(path)
    assert str(info.value) == (f"{path}: rows have K = 4 (96 rows) and K = 5 (row 37): every row of a source must "
                               "have the same number of completions")
    with pytest.raises(DataError, match="rw"):  # an explicit format checks the same
        load_records(path, format="rw")

    many = [_rw_row(3) if i % 3 == 0 else _rw_row(4) for i in range(21)]  # 7 rows of K = 3, 14 of K = 4
    with pytest.raises(DataError, match=r"K = 3 \(rows 1, 4, 7, 10, 13 and 2 more\) and K = 4 \(14 rows\)"):
        load_records(_write_jsonl(tmp_path / "many.jsonl", many))
    prompts, _ = load_prompts(_write_jsonl(tmp_path / "prompts.jsonl", many))  # prompts alone do not care about K
    assert len(prompts) == 21


def test_completions_and_rewards_of_different_lengths_are_a_malformed_row_numbered_from_1(tmp_path):
    rows = [_rw_row(4), dict(_rw_row(4), rewards=[1.0, 0.0, 0.5]), _rw_row(4)]
    records, report = load_records(_write_jsonl(tmp_path / "rw.jsonl", rows), max_bad_fraction=0.5)
    assert len(records) == 2 and report.bad == [(1, "4 completions but 3 rewards")]
    assert "row 2: 4 completions but 3 rewards" in report.summary()


def test_row_numbers_in_messages_are_1_based_like_lines(tmp_path):
    path = tmp_path / "lines.jsonl"
    path.write_text(json.dumps(_text_pair()) + "\n" + '{"prompt": "a", chosen\n' + json.dumps(_text_pair()) + "\n")
    _, report = load_records(str(path), max_bad_fraction=0.5)
    assert report.bad[0][0] == 1  # the report keeps 0-based indices, the message says what a user sees
    assert "row 2: invalid JSON on line 2" in report.summary()
    tok_report = TokenizeReport(n_records=2, n_kept=1, bos_policy="none")
    tok_report.drop(0, "a completion is empty after tokenisation")
    assert "record 1: a completion is empty" in tok_report.summary()


PAIR_PROMPT = "\n\nHuman: what is the capital of France ?\n\nAssistant:"


def _identical_after_cut_records():
    return [
        PreferenceRecord("same", PAIR_PROMPT, [" Paris . Lyon .", " Paris . France ."], [1.0, 0.0]),  # same 2 tokens
        PreferenceRecord("differs", PAIR_PROMPT, [" Paris .", " Lyon ."], [1.0, 0.0]),
        PreferenceRecord("k3_some", PAIR_PROMPT, [" Paris . red", " Paris . cat", " Lyon ."], [1.0, 0.5, 0.0]),
        PreferenceRecord("k3_all", PAIR_PROMPT, [" Paris . red", " Paris . cat", " Paris . dog"], [1.0, 0.5, 0.0]),
        PreferenceRecord("uncut_same", PAIR_PROMPT, [" Paris .", " Paris ."], [1.0, 0.0]),
    ]


def test_pairs_identical_after_truncation_are_dropped_counted_and_reported():
    tok = _tok()
    n_prompt = len(tok(PAIR_PROMPT, add_special_tokens=False).input_ids)
    records = _identical_after_cut_records()
    features, report = tokenize_records(records, tok, max_length=n_prompt + 2, max_prompt_length=n_prompt)
    assert [f["id"] for f in features] == ["differs", "k3_some"]  # a K-row with only some repeats is kept
    assert report.n_identical == 3 and report.n_dropped == 3 and report.n_kept == 2
    assert [index for index, _ in report.dropped] == [0, 3, 4]
    summary = report.summary()
    assert "record 1: all 2 responses are identical after truncation to max_length (id same)" in summary
    assert "record 4: all 3 responses are identical after truncation" in summary
    assert "(3 with identical responses after truncation)" in summary and "\n" not in summary

    features, report = tokenize_records([records[0], records[4]], tok, max_length=n_prompt + 8,
                                        max_prompt_length=n_prompt)
    assert [f["id"] for f in features] == ["same"]  # with room for the difference the pair is kept
    assert report.n_identical == 1 and "record 2: all 2 responses are identical (id uncut_same)" in report.summary()
    with pytest.raises(DataError, match="all 1 records were dropped"):
        tokenize_records(records[:1], tok, max_length=n_prompt + 2, max_prompt_length=n_prompt)


def test_samples_scored_as_they_are_keep_identical_completions():
    from prefopt.data import tokenize_completions

    tok = _tok()
    examples = tokenize_completions([PAIR_PROMPT], [[" Paris .", " Paris ."]], tok, max_length=64, max_prompt_length=32)
    assert len(examples) == 1 and examples[0]["completion_ids"][0] == examples[0]["completion_ids"][1]
