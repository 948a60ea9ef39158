"""Tests for prefopt.sample — the sampling stage: K completions per prompt (SPEC §6.1 steps 4 and 6, §8).

A tiny GPT-NeoX and its word-level tokenizer are saved with ``prefopt.tiny.save_tiny`` and loaded back with
``from_pretrained``, the code path a Hub model takes. The vocabulary holds 300 extra words (~370 tokens) so that a
randomly initialised model, whose next-token distribution is close to uniform, almost never samples the same
completion twice. Generation runs for real through transformers ``generate``; nothing of ours is mocked.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from prefopt.data import DataError, PreferenceRecord, tokenize_records
from prefopt.errors import ModelError
from prefopt.sample import (
    generate,
    load_model,
    load_tokenizer,
    meta_path,
    render_prompts,
    resolve_backend,
    row_seed,
    sample_to_jsonl,
)
from prefopt.tiny import build_tokenizer, save_tiny

WORDS = [f"w{i}" for i in range(300)]
CHAT = [{"role": "user", "content": "what is the answer ?"}]
TEXT = "\n\nHuman: hello , tell me a good answer please\n\nAssistant:"
LONG = "\n\nHuman: " + " ".join(WORDS[:40]) + " ?\n\nAssistant:"
PROMPTS = [TEXT, CHAT, "\n\nHuman: why ?\n\nAssistant:", [{"role": "user", "content": "w1 w2 w3 w4"}], LONG,
           "\n\nHuman: who is it\n\nAssistant:"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"), WORDS, seed=0)


@pytest.fixture(scope="module")
def tok(model_dir):
    return load_tokenizer(str(model_dir))


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(str(model_dir), device="cpu")


def _n_tokens(tok, text):
    return len(tok(text, add_special_tokens=False).input_ids)


# ---------------------------------------------------------------------------------------------------------------
# Prompt ids
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["saved", "llama-like", "qwen-like"])
def test_render_prompts_equal_the_prompt_ids_training_builds(tok, style):
    tokenizer = {"saved": tok, "llama-like": build_tokenizer(WORDS, add_bos_token=True),
                 "qwen-like": build_tokenizer(WORDS, with_bos=False)}[style]
    prompts = [CHAT, TEXT, LONG]
    records = [PreferenceRecord(str(i), p, [" good .", " bad ."], [1.0, 0.0]) for i, p in enumerate(prompts)]
    features, _ = tokenize_records(records, tokenizer, max_length=128, max_prompt_length=100)
    rendered = render_prompts(prompts, tokenizer)
    assert rendered == [f["prompt_ids"] for f in features]
    text = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(rendered[0], skip_special_tokens=True) == tokenizer.decode(
        tokenizer(text, add_special_tokens=False).input_ids, skip_special_tokens=True)
    if tokenizer.bos_token_id is not None:  # the chat template's BOS, once, never doubled by the tokenizer's own
        assert rendered[0][0] == tokenizer.bos_token_id and rendered[0].count(tokenizer.bos_token_id) == 1
    else:
        assert all(ids[0] != tokenizer.unk_token_id for ids in rendered)


def test_render_prompts_errors_are_one_line_data_errors():
    with pytest.raises(DataError, match="has no chat template"):
        render_prompts([CHAT], build_tokenizer(WORDS, chat_template=None))
    assert render_prompts([TEXT], build_tokenizer(WORDS, chat_template=None))  # text prompts need no template


# ---------------------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------------------


def test_sampling_gives_k_distinct_completions_per_prompt_in_prompt_order(model, tok):
    out = generate(model, tok, PROMPTS, k=4, temperature=1.0, max_new_tokens=8, seed=0, batch_size=5)
    assert len(out) == len(PROMPTS) and all(len(group) == 4 for group in out)
    assert all(isinstance(text, str) and text == text.strip() for group in out for text in group)
    # Near-uniform next-token distribution over ~370 tokens: two 8-token samples coincide only if both end at once
    # (both draw EOS first, ~1e-5); demand all 4 distinct for all but at most one prompt to leave room for that.
    distinct = sum(len(set(group)) == 4 for group in out)
    assert distinct >= len(PROMPTS) - 1, out
    assert len({text for group in out for text in group}) >= 4 * len(PROMPTS) - 2
    # In prompt order: each group is what that prompt alone gives (its seeds depend on its index only; see below).
    assert generate(model, tok, PROMPTS[:2], k=4, temperature=1.0, max_new_tokens=8, seed=0) == out[:2]


@pytest.mark.slow  # five full sampling passes, one of them one row at a time
def test_seed_reproduces_and_changes_samples_independently_of_batching(model, tok):
    settings = dict(k=3, temperature=0.8, max_new_tokens=8)
    first = generate(model, tok, PROMPTS, seed=7, batch_size=4, **settings)
    assert generate(model, tok, PROMPTS, seed=7, batch_size=4, **settings) == first
    other = generate(model, tok, PROMPTS, seed=8, batch_size=4, **settings)
    assert sum(a != b for x, y in zip(first, other) for a, b in zip(x, y)) >= 3 * len(PROMPTS) - 1
    # One generator per (prompt, sample): batch size and batch composition do not change the samples...
    assert generate(model, tok, PROMPTS, seed=7, batch_size=1, **settings) == first
    assert generate(model, tok, PROMPTS, seed=7, batch_size=18, **settings) == first
    # ...and sample j of a prompt is the same whatever K is.
    assert [g[:2] for g in generate(model, tok, PROMPTS, seed=7, batch_size=4, **dict(settings, k=2))] == \
        [g[:2] for g in first]
    assert row_seed(7, 0, 1) != row_seed(7, 1, 0) != row_seed(8, 0, 1)


def test_samples_follow_the_temperature_and_top_k_warped_distribution(model, tok):
    """3000 one-token samples against softmax(logits / T) over the top-k tokens, from the model's own forward pass."""
    temperature, top_k, n = 0.05, 5, 3000
    (ids,) = render_prompts([TEXT], tok)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    top = torch.topk(logits, top_k).indices.tolist()
    probs = torch.softmax(logits[top] / temperature, dim=-1).tolist()
    assert max(probs) - min(probs) > 0.2  # sharp enough that a wrong temperature shows
    assert not set(top) & set(tok.all_special_ids)  # each sample decodes to one word

    (samples,) = generate(model, tok, [TEXT], k=n, temperature=temperature, top_k=top_k, max_new_tokens=1,
                          batch_size=1000)
    counts = {token: 0 for token in top}
    for text in samples:
        token = tok.convert_tokens_to_ids(text)
        assert token in counts, f"{text!r} is outside the top-{top_k}"
        counts[token] += 1
    for token, p in zip(top, probs):  # binomial counts within 4 standard deviations
        assert abs(counts[token] - n * p) < 4 * (n * p * (1 - p)) ** 0.5, (token, counts, probs)


def test_greedy_is_identical_across_k_seeds_and_runs(model, tok):
    greedy = generate(model, tok, PROMPTS, k=3, temperature=0, max_new_tokens=10, seed=0)
    assert all(len(group) == 3 and len(set(group)) == 1 for group in greedy)
    assert generate(model, tok, PROMPTS, k=3, temperature=0, max_new_tokens=10, seed=123, batch_size=2) == greedy
    assert len({group[0] for group in greedy}) > 1  # the prompt matters: not one text for every prompt
    # top-k 1 sampling is greedy too: the sampler's warping is applied before the Gumbel noise.
    assert generate(model, tok, PROMPTS, k=2, temperature=1.0, top_k=1, max_new_tokens=10) == [g[:2] for g in greedy]


def test_left_padding_does_not_change_greedy_outputs(model, tok):
    short, long = TEXT, LONG
    short_ids, long_ids = render_prompts([short, long], tok)
    pads = len(long_ids) - len(short_ids)
    assert pads > 20  # the short prompt gets > 20 pad tokens on its left in the batch
    (alone,), (long_alone,) = (generate(model, tok, [p], temperature=0, max_new_tokens=12) for p in (short, long))
    batched = generate(model, tok, [short, long], temperature=0, max_new_tokens=12, batch_size=2)
    assert batched == [alone, long_alone]
    assert _n_tokens(tok, alone[0]) == 12  # a real continuation, not an immediate EOS

    # Control: this comparison can fail. Attending to the same pads changes this model's greedy output.
    padded = torch.tensor([[tok.pad_token_id] * pads + short_ids])
    leaky = model.generate(input_ids=padded, attention_mask=torch.ones_like(padded), max_new_tokens=12,
                           do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(leaky[0, padded.shape[1]:], skip_special_tokens=True).strip() != alone[0]


def test_max_new_tokens_caps_every_completion(model, tok):
    out = generate(model, tok, PROMPTS, k=3, temperature=1.0, max_new_tokens=3, seed=1)
    counts = [_n_tokens(tok, text) for group in out for text in group]
    assert max(counts) <= 3
    assert counts.count(3) >= len(counts) - 2  # the cap binds: EOS is one token in ~370
    longer = generate(model, tok, PROMPTS[:1], k=1, temperature=0, max_new_tokens=9)
    assert _n_tokens(tok, longer[0][0]) == 9


def test_eos_and_stop_strings_end_a_completion_before_them(model, tok):
    full = generate(model, tok, [TEXT], temperature=0, max_new_tokens=10)[0][0].split(" ")
    assert len(full) >= 6
    cut = full[3]
    prefix = " ".join(full[: full.index(cut)])  # text before the first occurrence of that word
    # Stop string: the completion ends just before it.
    stopped = generate(model, tok, [TEXT], temperature=0, max_new_tokens=10, stop_strings=[cut])[0][0]
    assert stopped == prefix
    # An extra EOS id in the model's generation config (an end-of-turn token) stops generation too.
    saved = model.generation_config.eos_token_id
    try:
        model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(cut)]
        assert generate(model, tok, [TEXT], temperature=0, max_new_tokens=10)[0][0] == prefix
    finally:
        model.generation_config.eos_token_id = saved


@pytest.mark.parametrize("setting, message", [
    ({"k": 0}, "k .* integer >= 1"),
    ({"temperature": -0.5}, "temperature must be a finite number >= 0"),
    ({"top_k": -1}, "top_k must be an integer >= 0"),
    ({"top_p": 0.0}, r"top_p must lie in \(0, 1\]"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"stop_strings": "Human:"}, "stop_strings must be a list"),
    ({"backend": "tgi"}, "unknown sampling backend 'tgi'"),
])
def test_bad_settings_are_one_line_data_errors(model, tok, setting, message):
    with pytest.raises(DataError, match=message) as info:
        generate(model, tok, [TEXT], **setting)
    assert "\n" not in str(info.value)


def test_backend_resolution(model):
    assert resolve_backend("hf") == "hf"
    assert resolve_backend("auto", model) == "hf"  # a loaded model never goes to vLLM, which loads weights itself
    if importlib.util.find_spec("vllm") is None:
        assert resolve_backend("auto", "some/model") == "hf"
        with pytest.raises(DataError, match="vLLM is not installed"):
            resolve_backend("vllm")


# ---------------------------------------------------------------------------------------------------------------
# sample_to_jsonl (the `prefopt sample` stage)
# ---------------------------------------------------------------------------------------------------------------

SETTINGS = dict(k=3, temperature=0.8, top_k=0, top_p=1.0, max_new_tokens=6, seed=3, batch_size=4, backend="hf")


def test_sample_to_jsonl_dedupes_prompts_and_writes_rows_and_meta(model_dir, tok, tmp_path):
    hh = "\n\nHuman: what is the answer ?\n\nAssistant:"
    rows = [{"prompt": TEXT, "chosen": " good .", "rejected": " bad ."},
            {"prompt": hh, "chosen": " yes .", "rejected": " no ."},
            {"prompt": TEXT, "chosen": " very good .", "rejected": " bad ."},  # repeated prompt
            {"prompt": LONG, "chosen": " yes .", "rejected": " no ."},
            {"prompt": hh, "chosen": " no .", "rejected": " yes ."}]  # repeated prompt
    prompts = tmp_path / "test.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "samples" / "sft.jsonl"

    meta = sample_to_jsonl(str(model_dir), str(prompts), str(out), **SETTINGS)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["prompt"] for row in written] == [TEXT, hh, LONG]  # unique, first-seen order
    assert all(len(row["completions"]) == 3 for row in written)
    # The stage's samples are generate()'s for the same prompts and settings (the model given by path: loaded on the
    # same device as the stage's, since a CPU and a GPU draw different random numbers).
    # String prompts go through the chat template by default (--chat-template auto: the tokenizer has one).
    assert [row["completions"] for row in written] == generate(str(model_dir), tok, [TEXT, hh, LONG], **SETTINGS,
                                                               chat_template="auto")
    assert meta["chat_template"] == "auto"
    assert json.loads(meta_path(out).read_text()) == meta
    assert meta_path(out).name == "sft.jsonl.meta.json"
    expected = dict(SETTINGS, model=str(model_dir), prompts=str(prompts), n_rows=5, n_unique_prompts=3, n_prompts=3,
                    n_completions=9, backend="hf", limit=None, dtype="auto")
    assert {key: meta[key] for key in expected} == expected
    assert meta["wall_seconds"] > 0 and 0 <= meta["n_hit_max_new_tokens"] <= 9
    assert sorted(p.name for p in out.parent.iterdir()) == ["sft.jsonl", "sft.jsonl.meta.json"]  # no temp files left

    meta = sample_to_jsonl(str(model_dir), str(prompts), str(out), limit=2, **SETTINGS)  # replaces the file
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == [TEXT, hh]
    assert (meta["n_unique_prompts"], meta["n_prompts"], meta["limit"]) == (3, 2, 2)


def test_sample_to_jsonl_reads_chat_prompts_as_training_does(model_dir, tmp_path):
    # UltraFeedback rows: the prompt is the conversation before the responses, written back as chat messages.
    conv = lambda answer: [*CHAT, {"role": "assistant", "content": answer}]  # noqa: E731
    rows = [{"prompt": CHAT[0]["content"], "chosen": conv("yes ."), "rejected": conv("no .")}, {"prompt": CHAT}]
    (tmp_path / "uf.json").write_text(json.dumps(rows[:1]))
    out = tmp_path / "uf_samples.jsonl"
    sample_to_jsonl(str(model_dir), str(tmp_path / "uf.json"), str(out), **dict(SETTINGS, k=2))
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["prompt"] == CHAT and len(row["completions"]) == 2


def test_sample_to_jsonl_missing_or_unreadable_prompts_are_data_errors(model_dir, tmp_path):
    out = str(tmp_path / "out.jsonl")
    cases = {
        str(tmp_path / "missing.jsonl"): "no such prompts file",
    }
    (tmp_path / "empty_dataset").mkdir()  # a folder is read as a local dataset repository; this one has no data
    cases[str(tmp_path / "empty_dataset")] = "could not load it"
    (tmp_path / "broken.json").write_text('[{"prompt": "a",')
    cases[str(tmp_path / "broken.json")] = "not valid JSON"
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    cases[str(tmp_path / "latin1.jsonl")] = "not UTF-8"
    (tmp_path / "nothing.jsonl").write_text(json.dumps({"question": "a"}) + "\n")
    cases[str(tmp_path / "nothing.jsonl")] = "cannot tell the format"
    for path, message in cases.items():
        with pytest.raises(DataError, match=message) as info:
            sample_to_jsonl(str(model_dir), path, out, **SETTINGS)
        assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="no such local model folder"):  # prefopt.models' one error type
        (tmp_path / "ok.jsonl").write_text(json.dumps({"prompt": TEXT}) + "\n")
        sample_to_jsonl(str(tmp_path / "no_model"), str(tmp_path / "ok.jsonl"), out, **SETTINGS)
    with pytest.raises(DataError, match="limit"):
        sample_to_jsonl(str(model_dir), str(tmp_path / "ok.jsonl"), out, limit=0, **SETTINGS)
    assert not (tmp_path / "out.jsonl").exists()
