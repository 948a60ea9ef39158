"""Log-probabilities of given completions under a saved model, and the KL estimate built from them.

The evaluation side of SPEC §1: the same tokenisation as training (:func:`prefopt.data.tokenize_records`, so the
prompt frame, BOS and EOS are identical) and the same per-sequence log-probs (:func:`prefopt.logps.sequence_logps`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


@torch.no_grad()
def completion_logps(
    model_dir: str | Path,
    prompts: Sequence,
    completions: Sequence[Sequence[str]],
    *,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    batch_size: int = 32,
) -> list[list[float]]:
    """Summed log π(y | x) of each completion (EOS included), shaped like ``completions``."""
    from prefopt.data import PreferenceCollator, tokenize_completions
    from prefopt.logps import sequence_logps
    from prefopt.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir), dtype="float32", device="cpu", eval_mode=True)
    examples = tokenize_completions(prompts, completions, tokenizer, max_length=max_length,
                                    max_prompt_length=max_prompt_length)
    collate = PreferenceCollator(pad_token_id=tokenizer.pad_token_id)
    scores: list[list[float]] = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        summed, _ = sequence_logps(logits, batch["input_ids"], batch["completion_mask"])
        scores += summed.view(batch["rewards"].shape).tolist()
    return scores


def kl_to_reference(
    policy_dir: str | Path, reference_dir: str | Path, prompts: Sequence, completions: Sequence[Sequence[str]], **kwargs
) -> list[float]:
    """Per-sample Monte-Carlo terms of KL(π ‖ π_ref) = E_{y∼π}[log π(y|x) − log π_ref(y|x)], flattened in order.

    ``completions`` must be samples from the policy (at temperature 1 for an unbiased estimate; at another
    temperature this is the log-ratio on the sampled distribution, as reported by EXO and the DPO paper's frontier).
    """
    policy = completion_logps(policy_dir, prompts, completions, **kwargs)
    reference = completion_logps(reference_dir, prompts, completions, **kwargs)
    return [p - r for ps, rs in zip(policy, reference) for p, r in zip(ps, rs)]
