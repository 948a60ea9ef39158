"""``data.tokenization``: the SimPO-family convention (``official``, SPEC §6.4) and TRL's (``trl``), checked on locally
built tokenizers in the style of Llama-3, Mistral-Instruct, Gemma-2, Qwen2.5 and zephyr (tests/chat_families.py).

``official`` is compared with an independent re-implementation of the convention written here from SPEC §6.4's
description (string rendering, one joint encoding per response, a prefix test for the boundary); ``trl`` with TRL
1.16's own ``DPOTrainer._prepare_dataset`` on the same rows. The shipped templates ``mistral_fixed`` and
``gemma2_merged_system`` are compared with plain-Python renderings of the conventions they stand for.
"""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest

from chat_families import DEFAULT_SYSTEM, FAMILIES, family_tokenizer
from prefopt.config import load_config
from prefopt.data import DataError, PreferenceRecord, tokenize_records
from prefopt.data.tokenize import split_joint
from prefopt.errors import ConfigError
from prefopt.models import CHAT_TEMPLATES, resolve_chat_template

SINGLE = [{"role": "user", "content": "what is the capital of france?"}]
MULTI = [
    {"role": "user", "content": "tell me a short story."},
    {"role": "assistant", "content": "once upon a time a fox lived near the river."},
    {"role": "user", "content": "and then?"},
]
WITH_SYSTEM = [{"role": "system", "content": "answer briefly."}, *SINGLE]
RESPONSES = ["the capital of france is paris.", "i do not know, sorry!"]

#: The template each family trains with under ``official`` (SPEC §6.2/§6.3: the official Mistral-Instruct and
#: Gemma-2 runs replace the tokenizer's template).
OFFICIAL_TEMPLATE = {"mistral": "mistral_fixed", "gemma2": "gemma2_merged_system"}


def _tokenizer(family: str, official: bool = True):
    name = OFFICIAL_TEMPLATE.get(family) if official else None
    return family_tokenizer(family, resolve_chat_template(name) if name else None)


def _records(prompt, responses=RESPONSES, n=1):
    return [PreferenceRecord(id=str(i), prompt=prompt, completions=list(responses), rewards=[1.0, 0.0])
            for i in range(n)]


def _reference_official(tokenizer, prompt, responses):
    """SPEC §6.4 restated: (prompt ids, [response ids]) before any truncation."""
    template = tokenizer.chat_template
    messages = list(prompt)
    if messages[0]["role"] != "system" and ("system" in template or "<|im_start|>" in template):
        messages = [{"role": "system", "content": ""}] + messages
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt_alone = encode(prompt_text)
    prompts, answers = [], []
    for response in responses:
        text = tokenizer.apply_chat_template([{"role": "assistant", "content": response}], tokenize=False)
        if tokenizer.bos_token is not None and text[: len(tokenizer.bos_token)] == tokenizer.bos_token:
            text = text[len(tokenizer.bos_token):]
        joint = encode(prompt_text + text)
        cut = len(prompt_alone) - (joint[: len(prompt_alone)] != prompt_alone)
        head, answer = joint[:cut], joint[cut:]
        if tokenizer.bos_token_id is not None and (not head or head[0] != tokenizer.bos_token_id):
            head = [tokenizer.bos_token_id] + head
        if not answer or answer[-1] != tokenizer.eos_token_id:
            answer = answer + [tokenizer.eos_token_id]
        prompts.append(head)
        answers.append(answer)
    assert all(p == prompts[0] for p in prompts)
    return prompts[0], answers


# ----------------------------------------------------------------------------------------------------------------------
# official: the convention itself
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("prompt", [SINGLE, MULTI, WITH_SYSTEM], ids=["single", "multi_turn", "system"])
def test_official_matches_an_independent_reimplementation(family, prompt):
    tokenizer = _tokenizer(family)
    (feature,), report = tokenize_records(_records(prompt), tokenizer, max_length=512, max_prompt_length=256,
                                          tokenization="official")
    expected_prompt, expected_responses = _reference_official(tokenizer, prompt, RESPONSES)
    assert feature["prompt_ids"] == expected_prompt
    assert feature["completion_ids"] == expected_responses
    assert report.tokenization == "official" and "official convention" in report.summary()


def test_llama3_scores_the_assistant_header_eot_and_eos_and_keeps_one_bos():
    """SPEC §6.4's measured case: the header (5 tokens), the content, <|eot_id|>, then EOS <|end_of_text|>."""
    tokenizer = _tokenizer("llama3")
    (official,), _ = tokenize_records(_records(SINGLE), tokenizer, max_length=512, max_prompt_length=256,
                                      tokenization="official")
    (trl,), _ = tokenize_records(_records(SINGLE), tokenizer, max_length=512, max_prompt_length=256)
    header = tokenizer("<|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False)["input_ids"]
    content = tokenizer(RESPONSES[0], add_special_tokens=False)["input_ids"]
    eot, eos, bos = (tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|end_of_text|>", "<|begin_of_text|>"))
    assert official["completion_ids"][0] == header + content + [eot, eos]
    assert trl["completion_ids"][0] == content + [eot]  # TRL's convention scores 2 + len(header) tokens fewer
    for feature in (official, trl):
        assert feature["prompt_ids"][0] == bos and feature["prompt_ids"].count(bos) == 1
    assert official["prompt_ids"] + header == trl["prompt_ids"]  # the header moved from the prompt to the response


def test_qwen25_without_bos_strips_and_prepends_nothing_and_scores_the_default_system_block():
    tokenizer = _tokenizer("qwen25")
    assert tokenizer.bos_token is None  # the official code's startswith(bos_token) would raise TypeError here
    (feature,), report = tokenize_records(_records(SINGLE), tokenizer, max_length=512, max_prompt_length=256,
                                          tokenization="official")
    prompt_text = tokenizer.decode(feature["prompt_ids"])
    response_text = tokenizer.decode(feature["completion_ids"][0])
    assert prompt_text.startswith("<|im_start|>system\n<|im_end|>\n")  # the inserted empty system message
    assert response_text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>assistant\n")
    assert response_text.endswith("<|im_end|>\n<|im_end|>")  # the end of turn, then EOS (= <|im_end|>) appended
    assert report.bos_policy == "none"


def test_zephyr_gets_the_empty_system_turn_and_bos_from_the_trainer():
    tokenizer = _tokenizer("zephyr")
    (feature,), _ = tokenize_records(_records(SINGLE), tokenizer, max_length=512, max_prompt_length=256,
                                     tokenization="official")
    assert tokenizer.decode(feature["prompt_ids"]).startswith("<s><|system|>\n</s>\n<|user|>\n")
    assert tokenizer.decode(feature["completion_ids"][1]).startswith("<|assistant|>\n")


def test_mistral_fixed_response_is_space_content_space_eos_without_a_second_eos():
    tokenizer = _tokenizer("mistral")
    (feature,), _ = tokenize_records(_records(SINGLE), tokenizer, max_length=512, max_prompt_length=256,
                                     tokenization="official")
    eos = tokenizer.eos_token_id
    for response, ids in zip(RESPONSES, feature["completion_ids"]):
        assert tokenizer.decode(ids) == f" {response} </s>"
        assert ids.count(eos) == 1 and ids[-1] == eos
    assert tokenizer.decode(feature["prompt_ids"]) == f"<s>[INST] {SINGLE[0]['content']} [/INST]"


def test_boundary_merge_moves_the_merged_token_into_the_response():
    """``enc(prompt + response)`` merging the prompt's last token: the cut moves one token earlier (SPEC §6.4)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)  # no pre-split at all
    raw.train_from_iterator(["abcdef"] * 50 + ["abc"] * 50, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt, full = encode("abc"), encode("abcdef")
    assert full[: len(prompt)] != prompt  # the premise: "abc" + "def" is not enc("abc") + enc("def")
    head, tail = split_joint(prompt, full)
    assert head + tail == full and len(head) == len(prompt) - 1
    clean_prompt, clean_full = encode("abc"), encode("abc") + encode("xyz")
    assert split_joint(clean_prompt, clean_full) == (clean_prompt, encode("xyz"))


def test_official_truncation_cuts_only_pairs_that_do_not_fit():
    tokenizer = _tokenizer("llama3")
    long_prompt = [{"role": "user", "content": " ".join(["please explain how rain forms in clouds."] * 12)}]
    short, _ = _reference_official(tokenizer, SINGLE, RESPONSES)
    long_ids, answers = _reference_official(tokenizer, long_prompt, RESPONSES)
    longest = max(len(a) for a in answers)
    # fits in max_length although the prompt is longer than max_prompt_length: official leaves it whole (trl cuts it)
    max_length, max_prompt_length = len(long_ids) + longest, len(long_ids) // 2
    (kept,), report = tokenize_records(_records(long_prompt), tokenizer, max_length=max_length,
                                       max_prompt_length=max_prompt_length, tokenization="official")
    assert kept["prompt_ids"] == long_ids and kept["completion_ids"] == answers and report.n_prompt_truncated == 0
    (cut_trl,), _ = tokenize_records(_records(long_prompt), tokenizer, max_length=max_length,
                                     max_prompt_length=max_prompt_length)
    assert len(cut_trl["prompt_ids"]) == max_prompt_length
    # one token too long: the prompt keeps BOS + its last max_prompt_length - 1 tokens, responses fit after it
    (cut,), report = tokenize_records(_records(long_prompt), tokenizer, max_length=max_length - 1,
                                      max_prompt_length=max_prompt_length, tokenization="official")
    assert cut["prompt_ids"] == [long_ids[0]] + long_ids[len(long_ids) - (max_prompt_length - 1):]
    assert cut["completion_ids"] == answers and report.n_prompt_truncated == 1
    # still too long after the prompt cut: every response keeps its first max_length - max_prompt_length tokens
    room = longest - 3
    (both,), report = tokenize_records(_records(long_prompt), tokenizer, max_length=max_prompt_length + room,
                                       max_prompt_length=max_prompt_length, tokenization="official")
    assert both["completion_ids"] == [a[:room] for a in answers]
    assert report.n_completion_truncated == sum(len(a) > room for a in answers)
    assert len(short) < max_prompt_length  # the short prompt is never cut
    (whole,), _ = tokenize_records(_records(SINGLE), tokenizer, max_length=max_prompt_length + room,
                                   max_prompt_length=max_prompt_length, tokenization="official")
    assert whole["prompt_ids"] == short


def test_text_prompts_are_tokenised_alike_under_both_conventions():
    tokenizer = _tokenizer("llama3")
    records = [PreferenceRecord(id="t", prompt="\n\nHuman: hello\n\nAssistant:", completions=[" yes", " no"],
                                rewards=[1.0, 0.0])]
    official, _ = tokenize_records(records, tokenizer, max_length=64, max_prompt_length=32, tokenization="official")
    trl, _ = tokenize_records(records, tokenizer, max_length=64, max_prompt_length=32)
    assert official == trl


# ----------------------------------------------------------------------------------------------------------------------
# Templates that cannot do what official needs, and bad settings
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family, cause", [("mistral", "roles must alternate"), ("gemma2", "System role")])
def test_native_templates_that_refuse_official_give_a_one_line_error_naming_the_settings(family, cause):
    tokenizer = _tokenizer(family, official=False)
    with pytest.raises(DataError) as error:
        tokenize_records(_records(SINGLE), tokenizer, max_length=128, max_prompt_length=64, tokenization="official")
    message = str(error.value)
    assert "\n" not in message and cause in message
    assert "data.tokenization" in message and "model.chat_template" in message and OFFICIAL_TEMPLATE[family] in message
    tokenize_records(_records(SINGLE), tokenizer, max_length=128, max_prompt_length=64)  # trl renders them fine


def test_unknown_tokenization_is_refused():
    with pytest.raises(DataError, match="data.tokenization must be one of trl, official"):
        tokenize_records(_records(SINGLE), _tokenizer("llama3"), max_length=128, max_prompt_length=64,
                         tokenization="simpo")


def _config(tmp_path, data_extra="", model_extra=""):
    path = tmp_path / "c.yaml"
    path.write_text(f"model:\n  name_or_path: x\n{model_extra}data:\n  train: t.jsonl\n{data_extra}"
                    "loss:\n  name: simpo\n  beta: 2.0\n  gamma_beta_ratio: 0.5\n")
    return path


def test_config_accepts_both_conventions_and_rejects_a_typo(tmp_path):
    assert load_config(_config(tmp_path)).data.tokenization == "trl"
    assert load_config(_config(tmp_path, "  tokenization: official\n")).data.tokenization == "official"
    with pytest.raises(ConfigError, match="data.tokenization must be one of 'trl', 'official'"):
        load_config(_config(tmp_path, "  tokenization: offical\n"))


def test_config_chat_template_takes_a_shipped_name_a_file_or_jinja(tmp_path):
    assert load_config(_config(tmp_path, model_extra="  chat_template: mistral_fixed\n")).model.chat_template
    (tmp_path / "t.jinja").write_text("{{ messages[0]['content'] }}")
    load_config(_config(tmp_path, model_extra=f"  chat_template: {tmp_path / 't.jinja'}\n"))
    with pytest.raises(ConfigError, match=r"did you mean 'mistral_fixed'\?.*gemma2_merged_system"):
        load_config(_config(tmp_path, model_extra="  chat_template: mistral-fixed\n"))


# ----------------------------------------------------------------------------------------------------------------------
# The shipped templates
# ----------------------------------------------------------------------------------------------------------------------


def _mistral_reference(messages, eos="</s>"):
    """The Mistral-Instruct convention of the official runs (SPEC §6.2), in plain Python."""
    lead, turns = "", list(messages)
    if turns and turns[0]["role"] == "system":
        lead, turns = turns[0]["content"].strip() + "\n\n", turns[1:]
    out = []
    for i, turn in enumerate(turns):
        text = (lead if i == 0 else "") + turn["content"]
        if turn["role"] == "user":
            out.append(f"[INST] {text.strip()} [/INST]")
        elif turn["role"] == "assistant":
            out.append(f" {text.strip()} {eos}")
    return "".join(out)


def _gemma_reference(messages, add_generation_prompt, bos="<bos>"):
    """The Gemma-2 convention of the official γ-PO Gemma-2 config (SPEC §6.3), in plain Python."""
    lead, turns = "", list(messages)
    if turns and turns[0]["role"] == "system":
        lead, turns = turns[0]["content"].strip() + "\n\n", turns[1:]
    out = [bos]
    for i, turn in enumerate(turns):
        text = ((lead if i == 0 else "") + turn["content"]).strip()
        role = "model" if turn["role"] == "assistant" else turn["role"]
        out.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
    return "".join(out) + ("<start_of_turn>model\n" if add_generation_prompt else "")


def _conversations():
    rng = random.Random(0)
    texts = ["hello", "  padded text \n", "", "line one\nline two", "what is 2+2?"]
    for n in range(1, 5):
        for roles in itertools.product(["system", "user", "assistant"], repeat=n):
            yield [{"role": role, "content": rng.choice(texts)} for role in roles]


def test_shipped_templates_render_as_their_conventions():
    from transformers.utils.chat_template_utils import render_jinja_template

    def render(name, conversation, add_generation_prompt, **specials):
        rendered, _ = render_jinja_template(conversations=[conversation], chat_template=resolve_chat_template(name),
                                            add_generation_prompt=add_generation_prompt, **specials)
        return rendered[0]

    count = 0
    for conversation in _conversations():
        for gen in (False, True):
            assert render("mistral_fixed", conversation, gen, bos_token="<s>", eos_token="</s>") == \
                _mistral_reference(conversation), conversation
            assert render("gemma2_merged_system", conversation, gen, bos_token="<bos>", eos_token="<eos>") == \
                _gemma_reference(conversation, gen), conversation
            count += 1
    assert count == 240 and set(CHAT_TEMPLATES) == {"mistral_fixed", "gemma2_merged_system"}


# ----------------------------------------------------------------------------------------------------------------------
# trl: identical to TRL 1.16's own tokenisation
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("prompt", [SINGLE, MULTI], ids=["single", "multi_turn"])
def test_trl_convention_equals_trl_dpo_trainer_tokenisation(family, prompt):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOTrainer

    tokenizer = _tokenizer(family, official=False)
    row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": RESPONSES[0]}],
           "rejected": [{"role": "assistant", "content": RESPONSES[1]}]}
    args = SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_end")
    theirs = DPOTrainer._prepare_dataset(SimpleNamespace(), Dataset.from_list([row]), tokenizer, args, "train")[0]
    (ours,), _ = tokenize_records(_records(prompt), tokenizer, max_length=1024, max_prompt_length=512)
    expected_prompt = list(theirs["prompt_ids"])
    if family == "zephyr":
        # The one documented difference: a tokenizer that adds BOS to plain text but a template that renders none
        # (zephyr's) gets its BOS from us, as it does at inference; TRL trains such prompts without BOS.
        assert FAMILIES[family].adds_bos and "bos_token" not in tokenizer.chat_template
        expected_prompt = [tokenizer.bos_token_id, *expected_prompt]
    assert ours["prompt_ids"] == expected_prompt
    assert ours["completion_ids"] == [theirs["chosen_ids"], theirs["rejected_ids"]]


# ----------------------------------------------------------------------------------------------------------------------
# prefopt inspect-data
# ----------------------------------------------------------------------------------------------------------------------


def _inspect_setup(tmp_path, tokenization="official"):
    import json

    tokenizer_dir = tmp_path / "llama3_tokenizer"
    _tokenizer("llama3").save_pretrained(tokenizer_dir)
    rows = [{"prompt": p[-1]["content"], "chosen": [*p, {"role": "assistant", "content": RESPONSES[0]}],
             "rejected": [*p, {"role": "assistant", "content": RESPONSES[1]}]} for p in (SINGLE, MULTI, SINGLE)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  name_or_path: {tokenizer_dir}\ndata:\n  train: {data}\n  format: pairs\n"
                      f"  tokenization: {tokenization}\n  max_length: 512\n  max_prompt_length: 256\n"
                      "loss:\n  name: simpo\n  beta: 2.0\n  gamma_beta_ratio: 0.5\n")
    return config


def test_inspect_data_json_shows_the_scored_tokens_of_the_config(tmp_path, capsys):
    import json

    from prefopt.cli import main

    config = _inspect_setup(tmp_path)
    assert main(["inspect-data", str(config), "--rows", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokenization"] == "official" and len(result["examples"]) == 2
    tokenizer = _tokenizer("llama3")
    for example, prompt in zip(result["examples"], (SINGLE, MULTI)):
        expected_prompt, expected_responses = _reference_official(tokenizer, prompt, RESPONSES)
        assert example["prompt_ids"] == expected_prompt
        for response, expected in zip(example["responses"], expected_responses):
            assert response["input_ids"] == expected_prompt + expected
            assert response["completion_mask"] == [0] * len(expected_prompt) + [1] * len(expected)
            assert response["n_scored"] == len(expected)
            assert response["scored_text"].startswith("<|start_header_id|>assistant<|end_header_id|>")
    assert [r["reward"] for r in result["examples"][0]["responses"]] == [1.0, 0.0]


def test_inspect_data_text_view_and_overrides(tmp_path, capsys):
    from prefopt.cli import main

    config = _inspect_setup(tmp_path)
    assert main(["inspect-data", str(config), "--data.tokenization", "trl", "--rows", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("data.tokenization: trl") and "row 1 " in out and "row 2 " not in out
    assert f"⟦{RESPONSES[0]}<|eot_id|>⟧" in out  # trl: only the content and the end of turn are scored


@pytest.mark.parametrize("argv, message", [
    (["--rows", "0"], "--rows must be >= 1"),
    (["--split", "eval"], "no data.eval"),
    (["--data.tokenization", "simpo"], "data.tokenization must be one of"),
])
def test_inspect_data_bad_input_is_one_line(tmp_path, capsys, argv, message):
    from prefopt.cli import main

    config = _inspect_setup(tmp_path)
    assert main(["inspect-data", str(config), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
