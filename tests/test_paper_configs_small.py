"""One paper config of each table trains two steps through its real run script (run/*.sh), with only the model and
the data overridden to a tiny GPT-NeoX and fixture files: the configs, the scripts and the CLI fit together."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORDS = "tell me about the apple river stone cat moon tree sure here is a clear kind answer no go away".split()


@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_model, tiny_tokenizer):
    """The session's tiny model (tests/conftest.py, linked as ``model``) and HH / chat fixture data in its words."""
    assert set(WORDS) <= set(tiny_tokenizer.get_vocab())
    root = tmp_path_factory.mktemp("paper_small")
    (root / "model").symlink_to(tiny_model, target_is_directory=True)
    rng = random.Random(0)
    hh, chat = [], []
    for i in range(16):
        topic = rng.choice(["apple", "river", "stone", "cat", "moon", "tree"])
        prompt = f"\n\nHuman: tell me about the {topic} {i}\n\nAssistant:"
        hh.append({"chosen": f"{prompt} sure here is a clear answer", "rejected": f"{prompt} no go away"})
        messages = [{"role": "user", "content": f"tell me about the {topic}"}]
        chat.append({"prompt": f"tell me about the {topic}", "prompt_id": f"p{i}",
                     "chosen": messages + [{"role": "assistant", "content": "sure here is a kind answer"}],
                     "rejected": messages + [{"role": "assistant", "content": "no go away"}]})
    (root / "hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hh))
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
    return root


def _run_script(small, script, method, data, results):
    extra = (f"--model.name_or_path {small / 'model'} --model.ref_name_or_path {small / 'model'} "
             f"--model.dtype float32 --model.attn_implementation sdpa --model.gradient_checkpointing false "
             f"--data.train {small / data} --data.eval null --data.data_dir null --data.name null "
             f"--data.max_length 64 --data.max_prompt_length 40 --max_steps 2 --save_steps null --eval_steps null "
             f"--bf16 false --use_cpu true --per_device_train_batch_size 2 --gradient_accumulation_steps 1 "
             f"--report_to none --logging_steps 1")
    env = {**os.environ, "RESULTS": str(results), "METHODS": method, "STAGES": "train", "EXTRA": extra,
           "PREFOPT": f"{sys.executable} -m prefopt.cli", "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(ROOT / "run" / script)], env=env, capture_output=True, text=True)


@pytest.mark.slow  # each case runs a whole `prefopt train` process through bash
@pytest.mark.parametrize("script, config, method, data, run_name", [
    ("hh_pref.sh", "table1/hh_pref/fpo.yaml", "fpo", "hh.jsonl", "table1/hh_pref_fpo"),
    ("llama3_base.sh", "table2/llama3_base/alphapo.yaml", "alphapo", "chat.jsonl", "table2/llama3_base_alphapo"),
    ("gamma_llama3.sh", "table3/llama3/gamma_simpo.yaml", "gamma_simpo", "chat.jsonl", "table3/llama3_gamma_simpo"),
])
def test_paper_config_trains_two_steps_through_its_script(small, tmp_path, script, config, method, data, run_name):
    results = tmp_path / "results"
    # Table 1's SFT and reward model stages are finished already, with their stage markers (the script skips them):
    # only alignment runs
    for done in ("table1/hh_sft", "table1/hh_rm"):
        (results / done).mkdir(parents=True)
        (results / done / "metrics.json").write_text("{}")
        subprocess.run([sys.executable, "-m", "prefopt.fingerprints", "record",
                        str(results / done / ".done_metrics.json.json"), str(results / done / "metrics.json")],
                       check=True)
    proc = _run_script(small, script, method, data, results)
    assert proc.returncode == 0, proc.stderr[-2000:]

    run = results / run_name
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2
    paper = yaml.safe_load((ROOT / "training_configs" / config).read_text())
    used = yaml.safe_load((run / "config.yaml").read_text())
    # the paper's method and hyper-parameters went through untouched; only model, data and sizes were overridden
    assert {k: v for k, v in used["loss"].items() if k in paper["loss"]} == paper["loss"]
    assert used["train"]["learning_rate"] == pytest.approx(float(paper["train"]["learning_rate"]))
    assert used["train"]["seed"] == paper["train"]["seed"]
    assert used["model"]["name_or_path"] == str(small / "model") and used["train"]["max_steps"] == 2
    if method == "fpo":
        assert used["train"]["logit_temperature"] == 0.8  # the EXO/f-PO Pythia setting survives (SPEC §3)
