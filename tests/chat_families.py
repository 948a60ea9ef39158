"""Locally built tokenizers with chat templates in the style of the model families the papers train (SPEC §6.2-§6.4).

Each is a byte-level BPE trained here with ``tokenizers`` on a few sentences of our own, plus the family's special
tokens, BOS/EOS choice and a chat template we wrote to render the way the family's does: Llama-3 (BOS in the
template *and* added by the tokenizer, header tokens, ``<|eot_id|>``), Mistral-Instruct v0.2 (``[INST]`` as text,
refuses non-alternating roles), Gemma-2 (refuses a system turn and non-alternating roles), Qwen2.5 (ChatML, no BOS
token, a default system prompt when the first turn is not a system turn) and zephyr (``<|user|>`` blocks separated by
newlines). The split pattern keeps a run of newlines together, as Llama-3's does, so no token merges across a
template boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

CORPUS = [
    "what is the capital of france? the capital of france is paris.",
    "tell me a short story about a red fox and a green hill.",
    "once upon a time a fox lived in a small house near the river.",
    "please explain how rain forms in clouds over the sea.",
    "water vapour cools, condenses into droplets and falls as rain.",
    "you are a helpful assistant. answer briefly and politely.",
    "hello! how can i help you today? thanks, that is all.",
    "write a poem about the moon and the quiet night sky.",
] * 4

#: A run of newlines is one pre-token (Llama-3's pattern does the same), letters/digits/punctuation split as GPT-2's.
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s*[\r\n]+|\s+(?!\S)|\s+"""

LLAMA3 = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
DEFAULT_SYSTEM = "You are a helpful assistant."
QWEN25 = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ZEPHYR = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n' + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    bos: Optional[str]
    eos: str
    specials: tuple[str, ...]
    adds_bos: bool  # the tokenizer's plain call prepends BOS (Llama-3, Mistral, Gemma)


FAMILIES = {
    "llama3": Family("llama3", LLAMA3, "<|begin_of_text|>", "<|end_of_text|>",
                     ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), True),
    "mistral": Family("mistral", MISTRAL, "<s>", "</s>", (), True),
    "gemma2": Family("gemma2", GEMMA2, "<bos>", "<eos>", ("<start_of_turn>", "<end_of_turn>"), True),
    "qwen25": Family("qwen25", QWEN25, None, "<|im_end|>", ("<|im_start|>", "<|endoftext|>"), False),
    "zephyr": Family("zephyr", ZEPHYR, "<s>", "</s>", ("<|user|>", "<|assistant|>", "<|system|>"), True),
}


@lru_cache(maxsize=None)
def _trained(family_name: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    family = FAMILIES[family_name]
    specials = [t for t in (family.bos, family.eos, "<pad>", *family.specials) if t]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    if family.adds_bos:
        bos_id = tokenizer.token_to_id(family.bos)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A $B", special_tokens=[(family.bos, bos_id)])
    return tokenizer.to_str()


def family_tokenizer(name: str, template: Optional[str] = None):
    """A fresh ``PreTrainedTokenizerFast`` of the family ``name`` (``template`` replaces its chat template)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    family = FAMILIES[name]
    kwargs = {"eos_token": family.eos, "pad_token": "<pad>"}
    if family.bos:
        kwargs["bos_token"] = family.bos
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained(name)), **kwargs)
    tokenizer.add_special_tokens({"additional_special_tokens": list(family.specials)})
    tokenizer.chat_template = template if template is not None else family.template
    return tokenizer
