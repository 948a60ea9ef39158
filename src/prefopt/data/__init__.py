"""Preference data: load, validate, tokenise and collate (SPEC §1, §3, §6.1–§6.3, §9).

Every data set the experiments read is reduced to one normalised record, :class:`PreferenceRecord`: a prompt and
K responses with K scores. Pairs (K = 2, chosen first) feed the pairwise losses and γ-PO (SPEC §2, §5); the
K-candidate "rw" rows feed EXO / f-PO (SPEC §3, §6.1 step 4); SFT examples (K = 1, the only format with fewer than two
responses) feed the SFT stage (SPEC §6.1 step 2). Supported sources:

- ``pairs``: ``{prompt, chosen, rejected}`` with string responses (HH / TL;DR after SPEC §6.1 step 1) or chat
  messages — HuggingFaceH4/ultrafeedback_binarized (SPEC §6.2) and the princeton-nlp on-policy sets (SPEC §6.3);
- ``rw``: ``{prompt, completions, rewards}``, our K-candidate JSONL (SPEC §6.1 step 4);
- ``princeton_rw``: the princeton-nlp sets read as K-candidate rows (``all_generated_responses``, ``all_rm_scores``);
- ``sft``: ``{prompt, completion}`` (string or chat-message prompt; the completion a string or one assistant message),
  or pairs rows of which only the chosen response is kept, so HH pairs train the SFT model (SPEC §6.1 step 2) — raw
  ``hh`` rows included (their prompt and chosen turn as ``hh`` splits them);
- ``hh``: Anthropic/hh-rlhf rows (load with ``data_dir="helpful-base"``), ``{chosen, rejected}`` full transcripts
  split into the shared prompt ending in ``"\\n\\nAssistant:"`` and the first differing assistant turn (SPEC §6.1
  step 1, see :func:`_parse_hh_row`);
- ``tldr``: openai/summarize_from_feedback ``comparisons`` rows ``{info, summaries, choice}`` (SPEC §6.1 step 1;
  :func:`tldr_split` maps our train/test to its train/validation), prompts built by :func:`tldr_prompt`;
- ``tldr_sft``: the filtered TL;DR SFT set (UCL-DARK/openai-tldr-filtered) ``{subreddit, title, post, summary}``
  as K = 1 records with the same prompt format.

``format="auto"`` picks the format from the first row: rw, then hh (string ``chosen`` holding ``"\\n\\nHuman:"`` and
no ``prompt`` column), pairs, tldr, tldr_sft, sft (see :data:`AUTO_ORDER`).

:func:`load_prompts` reads the prompt of each row of any of these formats (or of ``{prompt}`` rows) for the sampling
stage, and :func:`encode_prompts` gives the prompt token ids exactly as :func:`tokenize_records` builds them.

Bad rows are dropped and reported rather than silently trained on, and a run stops when too many are bad: a
schema mix-up otherwise looks like a poor result, not like an error. Tokenisation follows SPEC §1 (only response
tokens are scored, EOS included) and the two tokenizer traps SPEC §6.2 / §6.3 name: Llama-3's double BOS and
Qwen2.5's missing BOS. Chat records are tokenised in one of two conventions, ``data.tokenization``
(:data:`TOKENIZATIONS`): TRL's (``trl``) or the SimPO-family scripts' (``official``, SPEC §6.4).

The package, one responsibility per module:

- :mod:`prefopt.data.readers`: reading rows from local .json/.jsonl/.parquet files and Hub datasets;
- :mod:`prefopt.data.formats`: the format registry, format detection, parsing rows into records, HH/TL;DR helpers;
- :mod:`prefopt.data.tokenize`: chat rendering, the BOS policy and tokenisation of records, completions and prompts;
- :mod:`prefopt.data.collate`: :class:`PreferenceCollator`, which batches tokenised records;
- :mod:`prefopt.data.inspect`: the tokenised records as the trainer scores them (``prefopt inspect-data``).

Every public name is re-exported here, so ``from prefopt.data import X`` is the way to use them.
"""

from prefopt.data.collate import PreferenceCollator
from prefopt.data.formats import (
    AUTO_ORDER,
    CHAT_ROLES,
    FORMAT_SPECS,
    FORMATS,
    HH_ASSISTANT,
    HH_HUMAN,
    REQUIRED_COLUMNS,
    SFT_PAIR_COLUMNS,
    TLDR_PROMPT,
    TLDR_SPLITS,
    DataReport,
    FormatSpec,
    Messages,
    PreferenceRecord,
    Prompt,
    RowParser,
    load_prompts,
    load_records,
    tldr_prompt,
    tldr_split,
)
from prefopt.data.readers import QUOTED_BAD_ROWS
from prefopt.data.tokenize import TOKENIZATIONS, TokenizeReport, encode_prompts, tokenize_completions, tokenize_records
from prefopt.errors import DataError

__all__ = [
    "AUTO_ORDER",
    "CHAT_ROLES",
    "FORMAT_SPECS",
    "FORMATS",
    "HH_ASSISTANT",
    "HH_HUMAN",
    "QUOTED_BAD_ROWS",
    "REQUIRED_COLUMNS",
    "SFT_PAIR_COLUMNS",
    "TLDR_PROMPT",
    "TLDR_SPLITS",
    "TOKENIZATIONS",
    "DataError",
    "DataReport",
    "FormatSpec",
    "Messages",
    "PreferenceCollator",
    "PreferenceRecord",
    "Prompt",
    "RowParser",
    "TokenizeReport",
    "encode_prompts",
    "load_prompts",
    "load_records",
    "tldr_prompt",
    "tldr_split",
    "tokenize_completions",
    "tokenize_records",
]
