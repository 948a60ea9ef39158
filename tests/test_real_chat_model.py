"""A real pretrained chat model (SmolLM2-135M-Instruct, tests/real_model.py) through `prefopt train`, `prefopt sample`
and `prefopt inspect-data`: SimPO and γ-SimPO under both tokenisations (SPEC §6.4), the logged log-probs checked
against an independent float64 forward pass, and generation from the trained folder with a real chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from real_model import smollm2_dir

pytestmark = pytest.mark.slow  # converts a 135M model once per machine, then trains it on 2 CPU cores

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "I think it is Rome."),
    ("Name a primary colour.", "Red is a primary colour.", "Grass is green."),
]


@pytest.fixture(scope="module")
def smollm2():
    return smollm2_dir()


def _data(path: Path) -> Path:
    rows = [{"prompt": q, "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": good}],
             "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": bad}]}
            for q, good, bad in PAIRS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _independent_chosen_logps(model_dir: Path, examples: list[dict]) -> float:
    """Mean over pairs of the summed log-probs of the chosen response's scored tokens: a plain float32 forward and
    log-softmax, summed in float64."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sums = []
    for example in examples:
        chosen = example["responses"][0]
        ids = torch.tensor([chosen["input_ids"]])
        mask = torch.tensor(chosen["completion_mask"][1:], dtype=torch.bool)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
        token_logps = logp.gather(-1, ids[0, 1:, None])[:, 0]
        sums.append(float(token_logps[mask].sum()))
    return sum(sums) / len(sums)


@pytest.mark.parametrize("tokenization", ["trl", "official"])
def test_simpo_and_gamma_simpo_train_a_real_chat_model(smollm2, tmp_path, tokenization, capsys):
    from prefopt.cli import main as prefopt

    data = _data(tmp_path / "pairs.jsonl")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model: {{name_or_path: {smollm2}, dtype: float32}}\n"
        f"data: {{train: {data}, format: pairs, tokenization: {tokenization}, max_length: 64, max_prompt_length: 40}}\n"
        "loss: {name: simpo, beta: 2.0, gamma_beta_ratio: 0.5}\n"
        "train: {max_steps: 1, per_device_train_batch_size: 2, learning_rate: 1.0e-6, logging_steps: 1, "
        "report_to: [none], quiet: true}\n")
    assert prefopt(["inspect-data", str(config), "--json", "--rows", "2"]) == 0
    examples = json.loads(capsys.readouterr().out)["examples"]
    scored = [r["scored_tokens"] for e in examples for r in e["responses"]]
    if tokenization == "official":  # the assistant header is scored (and, on ChatML, the default system block)
        assert all("assistant" in "".join(tokens) for tokens in scored)
    else:
        assert all("assistant" not in "".join(tokens) for tokens in scored)
    expected = _independent_chosen_logps(smollm2, examples)
    for loss in ("simpo", "gamma_simpo"):
        run = tmp_path / loss
        extra = ["--margins.tau", "10.0"] if loss == "gamma_simpo" else ["--save_final_model", "false"]
        assert prefopt(["train", str(config), "--loss.name", loss, "--output_dir", str(run), *extra]) == 0
        metrics = json.loads((run / "metrics.json").read_text())
        assert torch.isfinite(torch.tensor(metrics["train"]["train_loss"]))
        first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        # step 1's forward sees the initial weights and both pairs: its logged chosen log-prob is theirs
        assert first["logps/chosen"] == pytest.approx(expected, rel=1e-4, abs=1e-3)
    capsys.readouterr()
    if tokenization == "trl":
        return  # one generation check is enough
    # the trained folder generates; string prompts go through the real chat template (--chat-template auto)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PAIRS[0][0]}) + "\n")
    out = tmp_path / "samples.jsonl"
    assert prefopt(["sample", str(tmp_path / "gamma_simpo" / "final"), str(prompts), str(out), "--k", "1",
                    "--temperature", "0", "--max-new-tokens", "8"]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["completions"][0].strip()  # an instruct model given its template answers instead of ending at once
