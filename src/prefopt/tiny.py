"""Tiny, real Hugging Face models and tokenizers built locally (no Hub): the stand-ins for Pythia / Llama in tests,
benchmarks and the small world (SPEC §8).

Everything is saved with ``save_pretrained`` and loaded back with ``from_pretrained``, the code path a Hub model takes,
so a test that passes a tiny model's folder where a Hub name would go exercises the real loading code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

#: A chat template in the Pythia/HH style ("\n\nHuman: ...\n\nAssistant: ..."), so that prompts rendered by the
#: tokenizer's own template look like the Anthropic HH format the Table 1 pipeline uses.
HH_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '\n\nHuman: ' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '\n\nAssistant: ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n\nAssistant:' }}{% endif %}"
)

SPECIAL_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}

#: Words the default tokenizer always knows, so tests can write readable prompts and responses.
BASE_WORDS = (
    "Human Assistant : ? . , ! the a an is are was be to of and or in on at for with what how why who which "
    "good bad very not yes no please thanks hello answer question tell me you I it this that"
).split()


def build_tokenizer(
    words: Iterable[str] = (),
    *,
    chat_template: Optional[str] = HH_CHAT_TEMPLATE,
    add_bos_token: bool = False,
    with_bos: bool = True,
):
    """A word-level ``PreTrainedTokenizerFast`` over ``BASE_WORDS`` + ``words`` (whitespace and punctuation split).

    ``add_bos_token=True`` makes plain ``tokenizer(text)`` prepend BOS (Llama style); ``with_bos=False`` builds a
    tokenizer without any BOS token (Qwen2.5 style). Newlines are kept as their own token so chat frames survive.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = dict(SPECIAL_TOKENS)
    if not with_bos:
        specials.pop("bos_token")
    vocab_words = list(dict.fromkeys([*specials.values(), "\n", *BASE_WORDS, *words]))
    vocab = {word: index for index, word in enumerate(vocab_words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex("[ \t]+"), behavior="removed"), pre_tokenizers.Split("\n", behavior="isolated"),
         pre_tokenizers.Punctuation(behavior="isolated")]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins word tokens with spaces
    if add_bos_token and with_bos:
        bos = specials["bos_token"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **specials)
    fast.padding_side = "right"
    if chat_template is not None:
        fast.chat_template = chat_template if with_bos else chat_template.replace("{{ bos_token }}", "")
    return fast


def build_model(
    tokenizer,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    max_position_embeddings: int = 256,
    seed: int = 0,
):
    """A randomly initialised GPT-NeoX (the Pythia architecture) sized for CPU tests."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny(directory: str | Path, words: Sequence[str] = (), *, seed: int = 0, **model_kwargs) -> Path:
    """Build a tiny tokenizer + model and save both to ``directory`` (loadable with ``from_pretrained``)."""
    directory = Path(directory)
    tokenizer = build_tokenizer(words)
    model = build_model(tokenizer, seed=seed, **model_kwargs)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


#: Words of the example data written by :func:`write_example`.
EXAMPLE_WORDS = "red blue green cat dog sun moon fast slow big small happy sad tree river stone".split()

#: Example configs written by :func:`write_example`: name → (data file, loss section, margins section).
EXAMPLE_CONFIGS = {
    "dpo": ("pairs.jsonl", {"name": "dpo", "beta": 0.1}, None),
    "simpo": ("pairs.jsonl", {"name": "simpo", "beta": 2.0, "gamma_beta_ratio": 0.5}, None),
    "gamma_simpo": ("pairs.jsonl", {"name": "gamma_simpo", "beta": 2.0, "gamma_beta_ratio": 0.5}, {"tau": 1.0}),
    "fpo_alpha_rw": ("rw.jsonl", {"name": "fpo", "divergence": "alpha", "alpha": 0.1, "beta_pi": 0.35, "beta_r": 0.1},
                     None),
}


def write_example(directory: str | Path, *, n_pairs: int = 64, seed: int = 0, overwrite: bool = False) -> Path:
    """A tiny model, data in our formats and one config per :data:`EXAMPLE_CONFIGS` entry, for trying ``prefopt train``
    offline in seconds. The data are random word strings (no signal): they show the machinery, not a result.

    ``directory`` must be new or empty unless ``overwrite`` (then the files written here replace any of the same
    name; others are left alone): a :class:`prefopt.errors.ConfigError` otherwise, so user files are never lost."""
    import json
    import random

    import yaml

    from prefopt.errors import ConfigError

    directory = Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file, not a folder; give `prefopt tiny` a new or empty folder")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise ConfigError(f"{directory} is not empty; give `prefopt tiny` a new or empty folder, or pass --overwrite")
    directory.mkdir(parents=True, exist_ok=True)
    save_tiny(directory / "model", EXAMPLE_WORDS, seed=seed)
    rng = random.Random(seed)

    def sentence(low: int, high: int, end: str) -> str:
        return " ".join(rng.choice(EXAMPLE_WORDS) for _ in range(rng.randint(low, high))) + f" {end}"

    with open(directory / "pairs.jsonl", "w") as handle:  # chat-message prompts, string responses
        for _ in range(n_pairs):
            prompt = [{"role": "user", "content": "tell me what is " + sentence(1, 3, "?")}]
            handle.write(json.dumps({"prompt": prompt, "chosen": sentence(2, 6, "."), "rejected": sentence(2, 6, "!")}) + "\n")
    with open(directory / "rw.jsonl", "w") as handle:  # K = 4 candidates with reward-model scores
        for _ in range(n_pairs // 2):
            handle.write(json.dumps({"prompt": "what is " + sentence(1, 2, "?"),
                                     "completions": [sentence(2, 5, ".") for _ in range(4)],
                                     "rewards": [round(rng.gauss(0, 1), 4) for _ in range(4)]}) + "\n")
    for name, (data, loss, margins) in EXAMPLE_CONFIGS.items():
        config = {
            "model": {"name_or_path": str(directory / "model")},
            "data": {"train": str(directory / data), "max_length": 48, "max_prompt_length": 24},
            "loss": loss,
            **({"margins": margins} if margins else {}),
            "train": {"output_dir": str(directory / "runs" / name), "max_steps": 10, "learning_rate": 1e-3,
                      "per_device_train_batch_size": 4, "logging_steps": 1, "report_to": ["none"]},
        }
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return directory
