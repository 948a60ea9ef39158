"""What the trainer scores: tokenised records as :class:`~prefopt.data.collate.PreferenceCollator` batches them, in a
form to read (``prefopt inspect-data CONFIG``) or to process (``--json``).

For each record: the decoded prompt, and for each response its full sequence (prompt + response ids), its
``completion_mask`` (1 on the scored tokens, SPEC §1) and the decoded scored span, so a user sees before a GPU hour is
spent which tokens a config's ``data.tokenization`` scores (SPEC §6.4: the assistant header and an appended EOS under
``official``, only the text after the generation prompt under ``trl``).
"""

from __future__ import annotations

from typing import Any, Sequence

from prefopt.data.collate import PreferenceCollator
from prefopt.data.formats import PreferenceRecord
from prefopt.data.tokenize import tokenize_records

#: Scored tokens listed piece by piece in the text view: the first and the last few.
HEAD_PIECES, TAIL_PIECES = 12, 4
#: Around the scored span in the text view.
OPEN, CLOSE = "⟦", "⟧"


def inspect_records(records: Sequence[PreferenceRecord], tokenizer, *, max_length: int, max_prompt_length: int,
                    tokenization: str = "trl") -> dict[str, Any]:
    """``{"tokenization", "report", "examples": [...]}``: each example ``{row, id, prompt_ids, prompt_text,
    n_prompt_tokens, responses: [{input_ids, completion_mask, n_scored, scored_text, scored_tokens, reward}]}``,
    built by the same tokenisation and collator the trainer uses. ``row`` is the 1-based row of the record."""
    features, report = tokenize_records(records, tokenizer, max_length=max_length,
                                        max_prompt_length=max_prompt_length, tokenization=tokenization)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collator = PreferenceCollator(pad_token_id=pad)
    examples = []
    for feature in features:
        batch = collator([feature])
        responses = []
        for k, reward in enumerate(feature["rewards"]):
            length = int(batch["attention_mask"][k].sum())
            input_ids = batch["input_ids"][k, :length].tolist()
            mask = batch["completion_mask"][k, :length].tolist()
            scored = [token for token, m in zip(input_ids, mask) if m]
            responses.append({
                "input_ids": input_ids, "completion_mask": mask, "n_scored": len(scored),
                "scored_text": tokenizer.decode(scored), "scored_tokens": tokenizer.convert_ids_to_tokens(scored),
                "reward": reward,
            })
        examples.append({
            "row": feature["index"] + 1, "id": feature["id"], "prompt_ids": list(feature["prompt_ids"]),
            "prompt_text": tokenizer.decode(feature["prompt_ids"]), "n_prompt_tokens": len(feature["prompt_ids"]),
            "responses": responses,
        })
    return {"tokenization": tokenization, "report": report.summary(), "examples": examples}


def _pieces(tokens: list[str]) -> str:
    if len(tokens) <= HEAD_PIECES + TAIL_PIECES:
        return repr(tokens)
    return f"{tokens[:HEAD_PIECES]!r} … {tokens[-TAIL_PIECES:]!r}"


def format_inspection(result: dict[str, Any]) -> str:
    """The text view of :func:`inspect_records`: prompt, then each response's scored span between ⟦ ⟧."""
    lines = [f"data.tokenization: {result['tokenization']} — {result['report']}"]
    for example in result["examples"]:
        lines += ["", f"── row {example['row']} (id {example['id']}): prompt {example['n_prompt_tokens']} tokens",
                  example["prompt_text"]]
        for k, response in enumerate(example["responses"], start=1):
            lines += [f"── response {k} (reward {response['reward']:g}): {response['n_scored']} scored tokens",
                      f"{OPEN}{response['scored_text']}{CLOSE}",
                      f"   scored pieces: {_pieces(response['scored_tokens'])}"]
    return "\n".join(lines)
