"""Collation of tokenised records into one right-padded batch of B·K sequences (SPEC §1, §2, §3).

:class:`PreferenceCollator` stacks the features of :func:`prefopt.data.tokenize.tokenize_records` record-major, with
a completion mask built from lengths so that only response tokens are scored.
"""

from __future__ import annotations

from typing import Sequence

import torch


def _per_record_matrix(features: Sequence[dict], key: str, k: int) -> torch.Tensor:
    for b, feature in enumerate(features):
        if len(feature[key]) != k:
            raise ValueError(f"feature {b} has {len(feature[key])} {key} for {k} completions")
    return torch.tensor([[float(v) for v in feature[key]] for feature in features], dtype=torch.float32)


class PreferenceCollator:
    """Stacks tokenised records into one right-padded batch of B·K sequences, record-major.

    Row ``b*K + k`` is record b's completion k, so the losses reshape per-sequence log-probs to ``[B, K]`` (chosen
    at k = 0 for pairs, SPEC §2/§3; K = 1 for SFT examples, one row per record, SPEC §6.1 step 2).
    ``completion_mask`` is 1 exactly on response tokens, the only ones scored (SPEC §1); masks are built from
    lengths, never by comparing with ``pad_token_id``, so pad = EOS is safe.
    ``ref_logps`` (precomputed reference log-probs) pass through when every feature has them.
    """

    def __init__(self, pad_token_id: int):
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or pad_token_id < 0:
            raise ValueError(f"pad_token_id must be an integer >= 0, got {pad_token_id!r}; set tokenizer.pad_token")
        self.pad_token_id = pad_token_id

    @staticmethod
    def _common_k(features: Sequence[dict]) -> int:
        ks = {len(feature["completion_ids"]) for feature in features}
        if len(ks) != 1:
            raise ValueError(f"features in one batch must have the same number of completions K, got K in {sorted(ks)}")
        return ks.pop()

    def _sequences(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        rows = [(f["prompt_ids"], c) for f in features for c in f["completion_ids"]]
        length = max(len(p) + len(c) for p, c in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        completion_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (prompt, completion) in enumerate(rows):
            end = len(prompt) + len(completion)
            input_ids[i, :end] = torch.tensor([*prompt, *completion], dtype=torch.long)
            attention_mask[i, :end] = 1
            completion_mask[i, len(prompt):end] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of features")
        k = self._common_k(features)
        batch = self._sequences(features)
        batch["rewards"] = _per_record_matrix(features, "rewards", k)
        batch["index"] = torch.tensor([int(f["index"]) for f in features], dtype=torch.long)
        has_ref = ["ref_logps" in f for f in features]
        if any(has_ref) and not all(has_ref):
            raise ValueError(f"ref_logps present in {sum(has_ref)} of {len(features)} features; all or none must have them")
        if all(has_ref):
            batch["ref_logps"] = _per_record_matrix(features, "ref_logps", k)
        return batch
