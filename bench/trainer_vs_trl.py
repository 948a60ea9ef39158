#!/usr/bin/env python
"""Benchmark: prefopt's ``PreferenceTrainer`` (loss ``dpo``) against TRL's ``DPOTrainer`` (``loss_type=["sigmoid"]``).

The same saved tiny GPT-NeoX and the same preference pairs are trained for a fixed number of optimiser steps by
both trainers, each in its own subprocess, and the median step time and the peak memory are reported side by side
with their ratio (ours / TRL). Run ``make bench`` or ``python bench/trainer_vs_trl.py --help``; see bench/README.md.

Process layout (so that no measurement is shared or inherited):

- the parent never imports torch: it writes the data, starts one ``--worker prepare`` subprocess that builds and
  saves each model once (``prefopt.tiny.save_tiny``) and reports the device and versions, then one
  ``--worker ours`` and one ``--worker trl`` subprocess per size, and prints the Markdown report;
- ``--worker ours`` runs the real ``prefopt train`` pipeline, :func:`prefopt.train.run_training`, from a config
  built with :func:`prefopt.config.load_config`; the only addition is a :class:`PreferenceTrainer` subclass that
  carries the timing callback (run_training takes no callbacks);
- ``--worker trl`` builds ``DPOConfig`` / ``DPOTrainer`` from the same model folder, tokenizer and JSONL rows.

Both workers import the same libraries (torch, transformers, datasets, trl, prefopt), so their baseline memory is the
same. Step time is ``time.perf_counter`` between the Trainer's ``on_step_begin`` and ``on_step_end`` (forward and
backward of policy and reference, clipping, optimiser and scheduler step; data loading and logging fall outside),
with ``torch.cuda.synchronize`` on a GPU, median over the steps after the warm-up ones. Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU; on the CPU it is the peak resident set size of the worker process
(``VmHWM`` in /proc/self/status: the same kernel counter as ``getrusage(RUSAGE_SELF).ru_maxrss``, but not carried
over from the parent across ``exec``; ``ru_maxrss`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "bench"
WORK = RESULTS / "work"

#: Model and sequence shapes. "small" is Pythia-70M-shaped (hidden 512, 6 layers, 8 heads, MLP 2048, untied
#: embeddings) with a smaller vocabulary (Pythia's is 50k); the tokenizer's vocabulary is grown with synthetic words.
#: ``seq`` is max_length (no pair is longer, so neither side truncates); ``steps`` the default number of optimiser
#: steps, chosen so that ``make bench`` takes 3-4 minutes on 2 idle CPU cores.
#: ``large_vocab`` (CPU) is the issue-15 memory case: a 32k vocabulary and 1k-token pairs, where the logits dominate.
#: ``gpu`` is Llama-3.2-1B-shaped (hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192, the Llama-3 vocabulary
#: of 128256, tied embeddings), bf16 weights, gradient checkpointing, 2k-token pairs: run it with bench/gpu.sh.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "vocab": 100, "seq": 64, "max_position": 128,
             "steps": 40},
    "small": {"hidden_size": 512, "num_layers": 6, "num_heads": 8, "vocab": 8192, "seq": 256, "max_position": 2048,
              "steps": 20},
    "large_vocab": {"hidden_size": 256, "num_layers": 2, "num_heads": 4, "vocab": 32768, "seq": 1024,
                    "max_position": 2048, "steps": 6, "batch_size": 2},
    "gpu": {"arch": "llama", "hidden_size": 2048, "num_layers": 16, "num_heads": 32, "num_kv_heads": 8,
            "intermediate": 8192, "vocab": 128256, "seq": 2048, "max_position": 4096, "steps": 16, "batch_size": 2,
            "dtype": "bfloat16", "gradient_checkpointing": True},
}
TRAINERS = ("ours", "trl")
LABELS = {"ours": "ours (prefopt PreferenceTrainer)", "trl": "TRL DPOTrainer"}
BETA = 0.1
SEED = 42

# ----------------------------------------------------------------------------------------------------------------------
# Memory and timing probes (worker side)
# ----------------------------------------------------------------------------------------------------------------------


def _synthetic_words(vocab: int) -> int:
    """How many synthetic words "w0", "w1", ... make a tiny tokenizer of ``vocab`` tokens (light import: no torch)."""
    from prefopt.tiny import BASE_WORDS, SPECIAL_TOKENS

    return vocab - len(SPECIAL_TOKENS) - 1 - len(set(BASE_WORDS))  # special tokens, "\n" and the base words


def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _ru_maxrss_mib() -> float:
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def _cpu_peak_mib() -> float:
    hwm = _proc_status_kib("VmHWM")
    return hwm / 1024 if hwm is not None else _ru_maxrss_mib()


def _cpu_current_mib() -> Optional[float]:
    rss = _proc_status_kib("VmRSS")
    if rss is not None:
        return rss / 1024
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return None


def _make_timer(cuda: bool):
    import torch
    from transformers import TrainerCallback

    def sync():
        if cuda:
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        """Wall time of every optimiser step, memory at the start of training, and the logged losses."""

        def __init__(self):
            self.step_seconds: list[float] = []
            self.losses: list[tuple[int, float]] = []
            self.memory_at_train_begin_mib: Optional[float] = None
            self.peak_at_train_begin_mib: Optional[float] = None
            self.train_begin = self.train_end = None
            self._start = None

        def on_train_begin(self, args, state, control, **kwargs):
            sync()
            if cuda:
                self.memory_at_train_begin_mib = torch.cuda.memory_allocated() / 2**20
                self.peak_at_train_begin_mib = torch.cuda.max_memory_allocated() / 2**20
            else:
                self.memory_at_train_begin_mib = _cpu_current_mib()
                self.peak_at_train_begin_mib = _cpu_peak_mib()
            self.train_begin = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.step_seconds.append(time.perf_counter() - self._start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append((state.global_step, float(logs["loss"])))

        def on_train_end(self, args, state, control, **kwargs):
            sync()
            self.train_end = time.perf_counter()

    return StepTimer()


def _batch_fingerprints(batches) -> list[list[int]]:
    """Per micro-batch: padded shape, the sum of the real (unpadded) token ids, row-order independent, and the number
    of real tokens."""
    out = []
    for batch in batches:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out.append([*ids.shape, int((ids * mask).sum()), int(mask.sum())])
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------------------------------------------


def _worker_prepare(spec: dict) -> dict:
    """Build and save each model once; report the device and package versions."""
    from importlib import metadata

    import torch

    from prefopt.tiny import save_tiny

    cuda = torch.cuda.is_available()
    parameters = {}
    for size in spec["sizes"]:
        shape = SIZES[size]
        folder = Path(spec["models"][size])
        words = [f"w{i}" for i in range(_synthetic_words(shape["vocab"]))]
        if shape.get("arch") == "llama":
            parameters[size] = _save_llama(folder, words, shape, cuda)
        else:
            save_tiny(folder, words, seed=0, hidden_size=shape["hidden_size"], num_layers=shape["num_layers"],
                      num_heads=shape["num_heads"], max_position_embeddings=shape["max_position"])
            from transformers import AutoConfig, AutoModelForCausalLM

            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
            parameters[size] = sum(p.numel() for p in model.parameters())
    versions = {}
    for name in ("prefopt", "torch", "transformers", "trl", "accelerate", "datasets", "tokenizers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cuda": cuda,
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "parameters": parameters,
        "matmul_tflops_bf16": _matmul_tflops() if cuda else None,
    }


def _save_llama(folder: Path, words: list[str], shape: dict, cuda: bool) -> int:
    """A randomly initialised Llama-3-shaped model (bf16, built on the GPU when there is one) and its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.tiny import build_tokenizer

    tokenizer = build_tokenizer(words)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape["hidden_size"], num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
        intermediate_size=shape["intermediate"], max_position_embeddings=shape["max_position"], rope_theta=500000.0,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="bfloat16",
    )
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def _matmul_tflops(n: int = 8192, repeats: int = 20) -> float:
    """The GPU's measured dense bf16 matrix rate (TFLOP/s): the MFU denominator."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def _common_imports():
    # Both trainers' workers import the same libraries, so the baseline resident memory is the same on both sides.
    import datasets  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import prefopt.data  # noqa: F401
    import prefopt.train  # noqa: F401
    import prefopt.trainer  # noqa: F401


def _worker_ours(spec: dict, timer) -> dict:
    import prefopt.trainer
    from prefopt.config import load_config
    from prefopt.train import run_training

    seen: dict[str, Any] = {}
    original = prefopt.trainer.PreferenceTrainer

    class TimedPreferenceTrainer(original):
        """The pipeline's own trainer, plus the timing callback and a record of what it trains on."""

        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=[*(callbacks or []), timer], **kwargs)
            seen["sequences"] = [
                f["prompt_ids"] + c for f in self.train_dataset for c in f["completion_ids"]
            ]
            seen["activation_checkpointing"] = bool(self.model.is_activation_checkpointing)
            seen["dtype"] = str(self.model.dtype)
            seen["batches"] = []

        def train(self, *args, **kwargs):
            try:
                return super().train(*args, **kwargs)
            finally:
                seen["forward_plans"] = {role: plan.description for role, plan in self._forward_plans.items()}

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            seen["batches"] += _batch_fingerprints(batches)
            return batches, num_items

    prefopt.trainer.PreferenceTrainer = TimedPreferenceTrainer  # run_training imports it from the module at call time
    base = {
        "model": {
            "name_or_path": spec["model"], "dtype": spec["dtype"], "attn_implementation": "sdpa",
            "gradient_checkpointing": spec["gradient_checkpointing"],
        },
        "data": {
            # text prompts as text, as TRL's DPOTrainer tokenises non-conversational data
            "train": spec["data"], "format": "pairs", "apply_chat_template": "never", "max_length": spec["max_length"],
            "max_prompt_length": spec["max_length"] // 2,
        },
        "loss": {"name": "dpo", "beta": BETA},
        "train": {
            "output_dir": spec["run_dir"], "seed": SEED, "learning_rate": spec["learning_rate"],
            "lr_scheduler_type": "constant", "warmup_ratio": 0.0, "max_steps": spec["steps"],
            "per_device_train_batch_size": spec["batch_size"], "gradient_accumulation_steps": 1,
            "optim": "adamw_torch", "weight_decay": 0.0, "max_grad_norm": 1.0, "bf16": spec["bf16"],
            "logging_steps": spec["steps"], "save_steps": None, "save_final_model": False, "report_to": ["none"],
            "margin_log_every": 0, "precompute_ref_logps": False, "dataloader_num_workers": 0,
        },
    }
    config = load_config(None, [], base=base)
    run_training(config, argv=["bench/trainer_vs_trl.py", "--worker", "ours"])
    return seen


def _worker_trl(spec: dict, timer) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    seen: dict[str, Any] = {"batches": []}

    class TimedDPOTrainer(DPOTrainer):
        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
            seen["batches"] += _batch_fingerprints(batches)
            return batches, num_items

    with open(spec["data"]) as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    args = DPOConfig(
        output_dir=spec["run_dir"],
        seed=SEED,
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        optim="adamw_torch",  # DPOConfig's default is adamw_torch_fused
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=spec["bf16"],  # DPOConfig's default is True
        fp16=False,
        gradient_checkpointing=spec["gradient_checkpointing"],  # DPOConfig's default is True (alias of the next one)
        activation_checkpointing=spec["gradient_checkpointing"],
        logging_steps=spec["steps"],
        logging_first_step=True,  # as the prefopt pipeline does
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        loss_type=["sigmoid"],
        beta=BETA,
        max_length=spec["max_length"],
        truncation_mode="keep_start",
        precompute_ref_log_probs=False,
        model_init_kwargs={"dtype": spec["dtype"], "attn_implementation": "sdpa"},
    )
    # The policy is given as the saved folder; with ref_model=None TRL loads the reference from the same folder.
    trainer = TimedDPOTrainer(
        model=spec["model"], ref_model=None, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer, callbacks=[timer],
    )
    seen["sequences"] = [
        example["prompt_ids"] + example[key]
        for example in trainer.train_dataset
        for key in ("chosen_ids", "rejected_ids")
    ]
    seen["activation_checkpointing"] = bool(trainer.model.is_activation_checkpointing)
    seen["dtype"] = str(trainer.model.dtype)
    trainer.train()
    return seen


def run_worker(which: str, spec_path: str, result_path: str) -> None:
    import hashlib

    spec = json.loads(Path(spec_path).read_text())
    if which == "prepare":
        Path(result_path).write_text(json.dumps(_worker_prepare(spec), indent=2))
        return
    _common_imports()
    import torch

    cuda = torch.cuda.is_available()
    timer = _make_timer(cuda)
    started = time.perf_counter()
    seen = (_worker_ours if which == "ours" else _worker_trl)(spec, timer)
    wall = time.perf_counter() - started
    if cuda:
        torch.cuda.synchronize()
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = _cpu_peak_mib()
    measured = timer.step_seconds[spec["warmup"]:]
    sequences = seen.pop("sequences")
    digest = hashlib.sha256(json.dumps(sorted(sequences)).encode()).hexdigest()[:16]
    batches = seen.get("batches") or []
    measured_batches = batches[spec["warmup"]:len(timer.step_seconds)]  # one micro-batch per optimiser step
    tokens = sum(b[-1] for b in measured_batches)
    positions = sum(b[0] * b[1] for b in batches)
    result = {
        "trainer": which,
        "steps": len(timer.step_seconds),
        "step_seconds": timer.step_seconds,
        "median_step_s": statistics.median(measured) if measured else None,
        "mean_step_s": statistics.fmean(measured) if measured else None,
        "min_step_s": min(measured) if measured else None,
        "max_step_s": max(measured) if measured else None,
        "peak_memory_mib": peak_mib,
        "memory_at_train_begin_mib": timer.memory_at_train_begin_mib,
        "peak_before_training_mib": timer.peak_at_train_begin_mib,
        "ru_maxrss_mib": None if cuda else _ru_maxrss_mib(),
        "train_seconds": (timer.train_end - timer.train_begin) if timer.train_end else None,
        "worker_seconds": wall,
        "losses": timer.losses,
        "token_digest": digest,
        "n_sequences": len(sequences),
        "mean_sequence_tokens": statistics.fmean(len(s) for s in sequences),
        "max_sequence_tokens": max(len(s) for s in sequences),
        "torch_threads": torch.get_num_threads(),
        # trained tokens: the real (unpadded) prompt + response tokens of the policy's sequences
        "tokens_per_s": tokens / sum(measured) if measured and tokens else None,
        "padding_fraction": 1 - sum(b[-1] for b in batches) / positions if positions else None,
        **seen,
    }
    Path(result_path).write_text(json.dumps(result, indent=2))


# ----------------------------------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------------------------------


def write_pairs(path: Path, n: int, seq: int, vocab_words: int, seed: int = 0) -> None:
    """``n`` text pairs whose prompt + response never exceeds ``seq`` tokens of the tiny word-level tokenizer.

    A prompt "\\n\\nHuman: <p words>\\n\\nAssistant:" is p + 8 tokens; a response " <r words>" is r tokens plus the
    EOS both pipelines append. Lengths vary, so padding happens as it would on real data.
    """
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab_words)]
    with open(path, "w") as handle:
        for _ in range(n):
            prompt_words = rng.randint(seq // 8, seq // 4)
            room = seq - (prompt_words + 8) - 1
            text = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
            row = {
                "prompt": f"\n\nHuman: {text(prompt_words)}\n\nAssistant:",
                "chosen": " " + text(rng.randint(room // 2, room)),
                "rejected": " " + text(rng.randint(room // 2, room)),
            }
            handle.write(json.dumps(row) + "\n")


def _busy_cpu_seconds() -> Optional[float]:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_subprocess(args: list[str], log_path: Path, what: str) -> dict:
    """Run one worker; returns its wall time and how many CPU cores other processes kept busy meanwhile."""
    busy0, own0, t0 = _busy_cpu_seconds(), _children_cpu_seconds(), time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.run([sys.executable, __file__, *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - t0
    busy1, own1 = _busy_cpu_seconds(), _children_cpu_seconds()
    if process.returncode != 0:
        tail = log_path.read_text().splitlines()[-40:]
        sys.exit(f"{what} failed (exit {process.returncode}); last lines of {log_path}:\n" + "\n".join(tail))
    others = None
    if busy0 is not None and busy1 is not None and wall > 0:
        others = max(0.0, ((busy1 - busy0) - (own1 - own0)) / wall)
    return {"wall_s": wall, "worker_cpu_s": own1 - own0, "other_processes_cores": others}


def _mfu(meta: dict, size: str, tokens_per_s: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: 6·N FLOPs per trained token plus 2·N per reference token (a live reference scores the
    same tokens), over the GPU's measured bf16 matrix rate. None on the CPU."""
    peak, n = meta.get("matmul_tflops_bf16"), meta.get("parameters", {}).get(size)
    if not (meta.get("cuda") and peak and n and tokens_per_s):
        return None
    return 8 * n * tokens_per_s / (peak * 1e12)


def _fmt_ratio(ours: Optional[float], theirs: Optional[float]) -> str:
    return f"{ours / theirs:.2f}" if ours and theirs else "n/a"


def report(meta: dict, settings: dict, results: dict) -> str:
    cuda = meta["cuda"]
    memory_kind = "torch.cuda.max_memory_allocated" if cuda else "peak RSS of the worker process (VmHWM)"
    lines = [
        "## prefopt PreferenceTrainer vs TRL DPOTrainer",
        "",
        f"- device: {meta['device']}" + ("" if cuda else f", {meta['torch_threads']} torch threads, "
                                         f"{meta['cpu_count']} logical CPUs"),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
        + f", Python {meta['python']}",
        f"- settings: DPO sigmoid loss β={BETA}; pairs per step (sequences = 2×) "
        + ", ".join(f"{size} {n}" for size, n in settings["batch_size"].items()) + "; optimiser steps "
        + ", ".join(f"{size} {n}" for size, n in settings["steps"].items())
        + f", the first {settings['warmup']} not measured; adamw_torch, lr {settings['learning_rate']:g} constant, "
        "max_grad_norm 1; weights "
        + ", ".join(f"{size} {SIZES[size].get('dtype', 'float32')}" for size in settings["steps"])
        + ("; bf16 mixed precision" if cuda else "")
        + "; live reference model; gradient checkpointing: "
        + (", ".join(s for s in settings["steps"] if SIZES[s].get("gradient_checkpointing")) or "none")
        + "; eval, saving and reporting off",
        f"- step time: median over the measured steps, on_step_begin → on_step_end"
        + (" with torch.cuda.synchronize" if cuda else "") + f"; peak memory: {memory_kind}",
        "",
        "| size | trainer | step time (s, median) | tokens/s | peak memory (MiB) | peak − memory at train start (MiB) "
        "| padding | MFU | ratio ours/TRL (time · memory) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size, pair in results.items():
        shape = SIZES[size]
        model = (f"{size}: hidden {shape['hidden_size']}, {shape['num_layers']} layers, vocab {shape['vocab']}, "
                 f"max_length {shape['seq']}")
        ours, theirs = pair.get("ours"), pair.get("trl")
        for which in TRAINERS:
            r = pair.get(which)
            if r is None:
                continue
            at_start = r.get("memory_at_train_begin_mib")
            increment = "n/a" if at_start is None else f"{r['peak_memory_mib'] - at_start:.0f}"
            ratio = ""
            if which == "ours" and ours and theirs:
                ratio = (f"{_fmt_ratio(ours['median_step_s'], theirs['median_step_s'])} · "
                         f"{_fmt_ratio(ours['peak_memory_mib'], theirs['peak_memory_mib'])}")
            rate = r.get("tokens_per_s")
            mfu = _mfu(meta, size, rate)
            padding = r.get("padding_fraction")
            lines.append(
                f"| {model if which == 'ours' else size} | {LABELS[which]} | {r['median_step_s']:.4f} "
                f"| {'n/a' if rate is None else f'{rate:.0f}'} | {r['peak_memory_mib']:.0f} | {increment} "
                f"| {'n/a' if padding is None else f'{padding:.1%}'} | {'n/a' if mfu is None else f'{mfu:.1%}'} "
                f"| {ratio} |"
            )
    if cuda:
        lines.append("")
        lines.append(f"MFU: (6·N per trained token + 2·N per reference token) · tokens/s against the measured bf16 "
                     f"matrix rate ({meta.get('matmul_tflops_bf16') or float('nan'):.0f} TFLOP/s, 8192² matmuls); N = "
                     + ", ".join(f"{s} {n / 1e9:.3f}B" for s, n in meta.get("parameters", {}).items()) + " parameters.")
    for size, pair in results.items():
        plans = (pair.get("ours") or {}).get("forward_plans")
        if plans:
            lines.append(f"- {size}, prefopt forward: " + " | ".join(f"{role}: {text}" for role, text in plans.items()))
    lines.append("")
    lines.append("Same work on both sides (checked by the workers):")
    for size, pair in results.items():
        ours, theirs = pair.get("ours"), pair.get("trl")
        if not (ours and theirs):
            continue
        same_tokens = ours["token_digest"] == theirs["token_digest"]
        same_batches = ours["batches"] == theirs["batches"]
        loss_o = ours["losses"][-1][1] if ours["losses"] else float("nan")
        loss_t = theirs["losses"][-1][1] if theirs["losses"] else float("nan")
        lines.append(
            f"- {size}: identical token ids {'yes' if same_tokens else 'NO'} ({ours['n_sequences']} sequences, "
            f"mean {ours['mean_sequence_tokens']:.0f} tokens); identical batches (shape and tokens, every step) "
            f"{'yes' if same_batches else 'NO'}; activation checkpointing ours {ours['activation_checkpointing']}, "
            f"TRL {theirs['activation_checkpointing']}; weights {ours['dtype']} / {theirs['dtype']}; "
            f"last logged loss ours {loss_o:.6f}, TRL {loss_t:.6f}"
        )
    loads = [
        (size, which, r["process"]["other_processes_cores"])
        for size, pair in results.items() for which, r in pair.items()
        if r.get("process", {}).get("other_processes_cores") is not None
    ]
    if loads:
        lines.append(
            "- CPU kept busy by other processes during each worker (cores, of "
            f"{meta['cpu_count']}): " + ", ".join(f"{size}/{which} {load:.2f}" for size, which, load in loads)
        )
        if not cuda and max(load for *_, load in loads) > 0.25:
            lines.append(
                "- WARNING: other processes competed for the CPU during the measurement; step times (not memory) "
                "are inflated and the time ratio is unreliable. Re-run on an idle machine."
            )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=None,
                        help="optimiser steps per trainer and size (default: " + ", ".join(
                            f"{size} {shape['steps']}" for size, shape in SIZES.items()) + ")")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the median (default 3)")
    parser.add_argument("--sizes", default="tiny,small", help=f"comma-separated, from {', '.join(SIZES)}")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="preference pairs per step (default 4; large_vocab and gpu: 2)")
    parser.add_argument("--learning-rate", type=float, default=1e-5, help="both trainers, constant (default 1e-5)")
    parser.add_argument("--trainers", default="ours,trl", help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS / "trainer_vs_trl.json", help="JSON results file")
    parser.add_argument("--worker", choices=("prepare", *TRAINERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        run_worker(args.worker, args.spec, args.result)
        return 0

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    unknown = [s for s in sizes if s not in SIZES] + [t for t in trainers if t not in TRAINERS]
    if unknown or not sizes:
        parser.error(f"unknown size or trainer {unknown}; sizes: {', '.join(SIZES)}")
    steps = {size: args.steps or SIZES[size]["steps"] for size in sizes}
    if min(steps.values()) <= args.warmup or args.warmup < 0:
        parser.error("--steps must be larger than --warmup (and --warmup >= 0)")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")

    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    batch_sizes = {size: args.batch_size or SIZES[size].get("batch_size", 4) for size in sizes}
    settings = {"steps": steps, "warmup": args.warmup, "batch_size": batch_sizes,
                "learning_rate": args.learning_rate, "beta": BETA, "seed": SEED, "sizes": sizes}

    models = {size: str(WORK / f"model-{size}") for size in sizes}
    prepare_spec = WORK / "prepare.json"
    prepare_spec.write_text(json.dumps({"sizes": sizes, "models": models}))
    print(f"== saving the models ({', '.join(sizes)})", file=sys.stderr, flush=True)
    _run_subprocess(["--worker", "prepare", "--spec", str(prepare_spec), "--result", str(WORK / "meta.json")],
                    WORK / "prepare.log", "model preparation")
    meta = json.loads((WORK / "meta.json").read_text())

    results: dict[str, dict[str, dict]] = {}
    for size in sizes:
        shape = SIZES[size]
        data = WORK / f"pairs-{size}.jsonl"
        # Exactly one epoch: every step sees new pairs, and no epoch boundary falls inside the measured steps.
        write_pairs(data, steps[size] * batch_sizes[size], shape["seq"], _synthetic_words(shape["vocab"]))
        results[size] = {}
        for which in trainers:
            spec = {
                **settings, "steps": steps[size], "batch_size": batch_sizes[size], "model": models[size],
                "data": str(data), "dtype": shape.get("dtype", "float32"),
                "gradient_checkpointing": bool(shape.get("gradient_checkpointing", False)),
                "max_length": shape["seq"], "bf16": meta["cuda"], "run_dir": str(WORK / f"run-{size}-{which}"),
            }
            shutil.rmtree(spec["run_dir"], ignore_errors=True)  # a fresh run folder: the pipeline refuses a used one
            spec_path = WORK / f"spec-{size}-{which}.json"
            spec_path.write_text(json.dumps(spec, indent=2))
            result_path = WORK / f"result-{size}-{which}.json"
            print(f"== {size}: {LABELS[which]}, {steps[size]} steps", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            load = _run_subprocess(["--worker", which, "--spec", str(spec_path), "--result", str(result_path)],
                                   WORK / f"{size}-{which}.log", f"{size} / {which}")
            results[size][which] = {**json.loads(result_path.read_text()), "process": load}
            print(f"   done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    text = report(meta, settings, results)
    total = time.perf_counter() - started
    print(text)
    shown = args.output.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    print(f"\nTotal benchmark wall time: {total:.1f} s; results in {shown}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(
        {"settings": settings, "meta": meta, "sizes": {s: SIZES[s] for s in sizes}, "results": results,
         "wall_seconds": total, "report": text}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
