"""The ``prefopt`` command line. Each subcommand is a thin wrapper over the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from prefopt import __version__


def _list_losses(args: argparse.Namespace) -> int:
    from prefopt.losses import LOSSES, REQUIRED

    for spec in LOSSES.values():
        inputs = "averaged" if spec.averaged_inputs else "summed"  # the loss's own convention (the default)
        if "length_norm" in spec.hparams:  # a config may switch it
            inputs += " log-probs (length_norm)"
        else:
            inputs += " log-probs"
        shape = "[B, K] groups" if spec.group else "pairs"
        flags = [shape, inputs, "reference" if spec.needs_reference else "reference-free"]
        if spec.dynamic_margins:
            flags.append("γ-PO dynamic margins")
        print(f"{spec.name:<12} {spec.description}  ({', '.join(flags)})")
        if args.verbose:
            for key, hp in spec.hparams.items():
                default = "required" if hp.default is REQUIRED else f"default {hp.default!r}"
                print(f"    {key:<18} {default:<16} {hp.rule}; {hp.help}")
    return 0


def _train(args: argparse.Namespace, base: Optional[dict] = None) -> int:
    from prefopt.config import load_config
    from prefopt.train import run_training

    config = load_config(args.config, args.overrides, base=base)
    _setup_logging()
    metrics = run_training(config, argv=args.argv)
    print(f"run folder: {config.run_dir}  (steps: {metrics['global_step']}, {metrics['wall_seconds']:.1f} s)")
    return 0


def _inspect_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prefopt inspect-data", add_help=False)
    parser.add_argument("--rows", type=int, default=3, help="how many of the first rows to show (default 3)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: prompt_ids, and per response input_ids, completion_mask and the scored text")
    parser.add_argument("--split", choices=["train", "eval"], default="train", help="data.train or data.eval")
    parser.add_argument("--stage", choices=["train", "sft", "rm"], default="train",
                        help="read CONFIG as prefopt train (default), sft or rm reads it")
    return parser


def _inspect_data(args: argparse.Namespace) -> int:
    """The first rows of a config's data tokenised exactly as its training run would (no model is loaded)."""
    import json

    from prefopt.config import load_config
    from prefopt.data import load_records
    from prefopt.data.inspect import format_inspection, inspect_records
    from prefopt.errors import ConfigError
    from prefopt.models import tokenizer_from_config

    options, overrides = _inspect_parser().parse_known_args(args.overrides)
    if options.rows < 1:
        raise ConfigError(f"--rows must be >= 1, got {options.rows}")
    if options.stage == "rm":
        from prefopt.rm import load_rm_config

        config = load_rm_config(args.config, overrides)
    else:
        config = load_config(args.config, overrides, base=SFT_BASE if options.stage == "sft" else None)
    d = config.data
    source, split = (d.train, d.train_split) if options.split == "train" else (d.eval, d.eval_split)
    if not source:
        raise ConfigError(f"the config has no data.{options.split}")
    records, _ = load_records(source, split=split, format=d.format, limit=options.rows,
                              max_bad_fraction=d.max_bad_fraction, name=d.name, data_dir=d.data_dir)
    result = inspect_records(records, tokenizer_from_config(config.model), max_length=d.max_length,
                             max_prompt_length=d.max_prompt_length, tokenization=d.tokenization)
    print(json.dumps(result, ensure_ascii=False, indent=1) if options.json else format_inspection(result))
    return 0


def _tiny(args: argparse.Namespace) -> int:
    from prefopt.tiny import EXAMPLE_CONFIGS, write_example

    directory = write_example(args.directory, overwrite=args.overwrite)
    print(f"wrote a tiny model, data and configs to {directory}; try:")
    for name in EXAMPLE_CONFIGS:
        print(f"  prefopt train {directory / (name + '.yaml')}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from prefopt.smallworld.demo import METHODS, DemoSettings, run_demo

    settings = DemoSettings(out=args.out, seed=args.seed, noise=args.noise)
    if args.methods:
        settings = replace(settings, methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()))
    unknown = [m for m in settings.methods if m not in METHODS]
    if unknown:
        from prefopt.errors import ConfigError

        raise ConfigError(f"unknown demo methods {unknown}; choose from {', '.join(METHODS)}")
    if args.quick:  # the reduced demo of the test suite: fewer prompts and steps
        settings = replace(settings, n_test_prompts=64)
    _quiet_libraries()
    metrics = run_demo(settings)
    if not args.no_figures:
        from prefopt.plots import draw_demo_figures

        draw_demo_figures(settings.out, [Path(settings.out) / "runs" / name for name in metrics["results"]])
    print((Path(settings.out) / "table.md").read_text())
    print(f"results in {settings.out}/ (table.md, metrics.json, runs/, figures/) — {metrics['wall_seconds']:.0f} s")
    return 0


def _noise_sweep(args: argparse.Namespace) -> int:
    from prefopt.plots import draw_noise_sweep
    from prefopt.smallworld.demo import NOISE_METHODS, run_noise_sweep

    _quiet_libraries()
    levels = [float(v) for v in args.noise_levels.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    methods = [m.strip() for m in (args.methods or ",".join(NOISE_METHODS)).split(",")]
    summary = run_noise_sweep(args.out, noise_levels=levels, seeds=seeds, methods=methods)
    draw_noise_sweep(args.out, Path(args.out) / "noise.png")
    print((Path(args.out) / "table.md").read_text())
    print(f"results in {args.out}/ (table.md, metrics.json, noise.png) — {summary['wall_seconds']:.0f} s")
    return 0


def _claims(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from prefopt.plots import draw_claims_figures
    from prefopt.smallworld.claims import ClaimSettings, quick_settings, run_claims

    settings = quick_settings(args.out) if args.quick else ClaimSettings(out=args.out)
    if args.seeds:
        settings = replace(settings, seeds=tuple(int(v) for v in args.seeds.split(",")))
    _quiet_libraries()
    metrics = run_claims(settings)
    draw_claims_figures(args.out, metrics)
    print((Path(args.out) / "table.md").read_text())
    print(f"results in {args.out}/ (table.md, metrics.json, figures/, seed*/) — {metrics['wall_seconds']:.0f} s")
    return 0


def _quiet_libraries() -> None:
    """The demo runs dozens of short trainings: keep the terminal to its own progress bar and table."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("prefopt").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")


#: What ``prefopt sft`` sets under a training config (SPEC §6.1 step 2: the same trainer with the ``sft`` loss on one
#: response per prompt, pairs rows giving their chosen one).
SFT_BASE = {"loss": {"name": "sft"}, "data": {"format": "sft"}}


def _sft(args: argparse.Namespace) -> int:
    return _train(args, base=SFT_BASE)


def _rm(args: argparse.Namespace) -> int:
    from prefopt.rm import load_rm_config, run_reward_model

    config = load_rm_config(args.config, args.overrides)
    _setup_logging()
    metrics = run_reward_model(config, argv=args.argv)
    accuracy = metrics.get("eval_accuracy")
    print(f"run folder: {config.run_dir}" + (f"  (held-out pair accuracy {accuracy:.3f})" if accuracy is not None else ""))
    return 0


#: What every stage that reads data says about its source (SPEC §6.1-§6.3: Hub names or local files alike).
DATA_SOURCE_HELP = ("a local .json/.jsonl/.parquet file, or a Hugging Face dataset by name read with "
                    "datasets.load_dataset (--split, --data-config, --data-dir)")
CHAT_TEMPLATE_HELP = ("string prompts: auto (default) = as one user turn through the model's chat template when its "
                      "tokenizer has one, always = through it (an error without one), never = as text, e.g. HH / "
                      "TL;DR prompts that already end in the assistant cue; chat-message prompts always use the "
                      "template")


def _add_data_source(parser: argparse.ArgumentParser, split: str = "train", prefix: str = "",
                     format_help: bool = True) -> None:
    """``--split``, ``--data-config``, ``--data-dir`` (and ``--format``) of a data source: the same flags in every
    stage that reads data."""
    dash = f"--{prefix}-" if prefix else "--"
    parser.add_argument(f"{dash}split", default=split, help=f"split of a Hub dataset (default {split})")
    parser.add_argument(f"{dash}data-config", default=None,
                        help="configuration of a Hub dataset (e.g. comparisons for openai/summarize_from_feedback)")
    parser.add_argument(f"{dash}data-dir", default=None,
                        help="data_dir of a Hub dataset (e.g. helpful-base for Anthropic/hh-rlhf)")
    if format_help:
        parser.add_argument(f"{dash}format", default="auto", help="row format (auto: detected; hh, tldr, pairs, ...)")


def _sample(args: argparse.Namespace) -> int:
    from prefopt.sample import sample_to_jsonl

    meta = sample_to_jsonl(args.model, args.prompts, args.out, k=args.k, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
                           batch_size=args.batch_size, limit=args.limit, backend=args.backend, command=args.argv,
                           split=args.split, name=args.data_config, data_dir=args.data_dir, format=args.format,
                           chat_template=args.chat_template)
    print(f"wrote {args.out}: {meta['n_prompts']} unique prompts × {args.k} completions ({meta['wall_seconds']:.1f} s)")
    return 0


def _onpolicy(args: argparse.Namespace) -> int:
    from prefopt.onpolicy import build_onpolicy

    meta = build_onpolicy(
        args.model, args.out, prompts=args.prompts, split=args.split, name=args.data_config, data_dir=args.data_dir,
        format=args.format, reward_model=args.rm, trust_remote_code=not args.no_trust_remote_code, n=args.n,
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
        batch_size=args.batch_size, rm_batch_size=args.rm_batch_size, chunk_size=args.chunk_size, limit=args.limit,
        backend=args.backend, overwrite=args.overwrite, command=args.argv)
    print(f"wrote {args.out}: {meta['n_rows']} preference rows from {meta['n_prompts']} prompts × {args.n} responses "
          f"({meta['n_dropped_identical']} dropped: identical responses, {meta['n_dropped_tied']}: tied scores; "
          f"{meta['wall_seconds']:.0f} s)")
    return 0


def _label(args: argparse.Namespace) -> int:
    from prefopt.rm import label_completions

    meta = label_completions(args.rm, args.samples, args.out, batch_size=args.batch_size, command=args.argv,
                             overwrite=args.overwrite, split=args.split, name=args.data_config,
                             data_dir=args.data_dir, chat_template=args.chat_template)
    print(f"wrote {args.out}: {meta['n_completions']} completions scored by {args.rm} (mean {meta['reward_mean']:.3f})")
    return 0


def _pref_to_rw(args: argparse.Namespace) -> int:
    from prefopt.rm import pref_to_rw

    pref_to_rw(args.pairs, args.out, command=args.argv, overwrite=args.overwrite)
    print(f"wrote {args.out}")
    return 0


def _mean_reward(args: argparse.Namespace) -> int:
    import json

    from prefopt.io import write_json
    from prefopt.rm import mean_reward
    from prefopt.runs import StageRecord, meta_path

    record = StageRecord(meta_path(args.out), "mean-reward", command=args.argv) if args.out else None
    result = mean_reward(args.rm, args.samples)
    if args.out:
        write_json(args.out, result)
        record.finish(rm=args.rm, samples=args.samples, out=args.out)
    print(json.dumps(result, indent=2))
    return 0


def _judge(args: argparse.Namespace) -> int:
    from prefopt.evaluation import judge_against_baseline
    from prefopt.judges import JudgeClient, PairwiseLLMJudge

    client = JudgeClient(model=args.model, base_url=args.base_url)  # key: PREFOPT_JUDGE_API_KEY / OPENAI_API_KEY
    judge = PairwiseLLMJudge(client, args.template)
    summary = judge_against_baseline(judge, args.policy, args.baseline, args.out, baseline_kind=args.baseline_kind,
                                     n_prompts=args.n_prompts, seed=args.seed, workers=args.workers,
                                     command=args.argv, baseline_source={
                                         "split": args.baseline_split, "name": args.baseline_data_config,
                                         "data_dir": args.baseline_data_dir, "format": args.baseline_format})
    print(f"win rate {100 * summary['win_rate']:.1f}% (95% CI {100 * summary['ci'][0]:.1f}–{100 * summary['ci'][1]:.1f}; "
          f"official, ties and invalid as losses: {100 * summary['official_win_rate']:.1f}%) over "
          f"{summary['pairs']} prompts × 2 orders: {summary['wins']} wins, {summary['ties']} ties, "
          f"{summary['losses']} losses, {summary['invalid']} invalid — {args.out}/winrate.json")
    return 0


def _bench_small(args: argparse.Namespace) -> int:
    from prefopt.benchmarks.tables import build_table, load_results
    from prefopt.smallworld.benchmarks import demo_policies, run_small_world_benchmarks

    _quiet_libraries()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or None
    policies, baseline_dir, world = demo_policies(args.demo, methods)
    out = Path(args.out)
    run_small_world_benchmarks(policies, baseline_dir, out, world=world, n_prompts=args.n_prompts, seed=args.seed)
    table = build_table(load_results(out))
    (out / "table.md").write_text(table)
    print(table)
    print(f"results in {out}/<model>/<benchmark>.json, table in {out}/table.md")
    return 0


def _bench_table(args: argparse.Namespace) -> int:
    from prefopt.benchmarks.tables import main as tables_main

    return tables_main([args.results, *(["--latex"] if args.latex else []), *(["--out", args.out] if args.out else []),
                        *(["--reference", args.reference] if args.reference else []),
                        *(["--allow-mixed-rules"] if args.allow_mixed_rules else [])])


def _table1(args: argparse.Namespace) -> int:
    from prefopt.io import write_atomic
    from prefopt.table1 import build_table1, load_table1

    table = build_table1(load_table1(args.results, checkpoint=args.checkpoint),
                         fmt="latex" if args.latex else "markdown")
    if args.out:
        write_atomic(Path(args.out), table)
    print(table, end="")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _preflight(args: argparse.Namespace) -> int:
    """What a paper-scale table needs that this machine may lack: a GPU, the Hugging Face Hub, a judge endpoint."""
    import os

    missing = []
    needs = {n.strip() for n in args.needs.split(",") if n.strip()}
    if "gpu" in needs:
        import torch

        if not torch.cuda.is_available():
            missing.append("a CUDA GPU (the paper used 4; this machine has none)")
    if "hub" in needs:
        try:
            from huggingface_hub import HfApi

            from prefopt.hub import offline_from_env

            with offline_from_env():
                HfApi().model_info(args.hub_probe, timeout=10)
        except Exception as error:  # any failure means the Hub cannot serve the models and data sets
            missing.append(f"the Hugging Face Hub ({args.hub_probe} unreachable: {type(error).__name__})")
    if "judge" in needs and not os.environ.get("PREFOPT_JUDGE_MODEL"):
        missing.append("a judge endpoint (set PREFOPT_JUDGE_MODEL, PREFOPT_JUDGE_API_KEY or OPENAI_API_KEY, and "
                       "PREFOPT_JUDGE_BASE_URL for a non-OpenAI server)")
    benchmarks = os.environ.get("BENCHMARKS", "alpaca_eval arena_hard mt_bench").split()
    arena_dir = os.environ.get("ARENA_HARD_DIR")
    if args.what in ("table2", "table3") and "arena_hard" in benchmarks and not (arena_dir and Path(arena_dir).is_dir()):
        missing.append("ARENA_HARD_DIR, your checkout of arena-hard-auto at its last v0.1 commit (its questions, "
                       "baseline answers and judge configuration are read from it), or BENCHMARKS without arena_hard")
    if missing:
        print(f"prefopt: {args.what} at paper scale needs " + "; ".join(missing) + ". Nothing was run. On a CPU, "
              f"run the same pipeline in the small world: make {args.what} SCALE=small", file=sys.stderr)
        return 2
    print(f"{args.what}: GPU, Hub and judge are available")
    return 0


def _figures(args: argparse.Namespace) -> int:
    from prefopt.plots import draw_demo_figures

    out = Path(args.results)
    runs = sorted(p for p in (out / "runs").glob("*") if (p / "metrics.jsonl").is_file())
    if not runs:
        from prefopt.errors import ConfigError

        raise ConfigError(f"no run folders in {out}/runs: run `make demo` (or prefopt demo --out {out}) first")
    for path in draw_demo_figures(out, runs):
        print(f"wrote {path}")
    return 0


#: The methods of each paper table, in the small world (SPEC §6; the demo's method names).
SMALL_TABLE_METHODS = {
    "table1": "dpo,exo_pref,exo_rw,fpo_alpha_pref,fpo_alpha_rw",
    "table2": "alphapo,simpo,dpo",
    "table3": "gamma_simpo,simpo,dpo,gamma_dpo",
}


def _small_table(args: argparse.Namespace) -> int:
    """A paper table's methods and columns in the small world: Table 1's win rates and reward from the demo pipeline,
    Tables 2 and 3's benchmark columns from `bench-small` on the same policies."""
    import shutil

    out = Path(args.out) / args.table
    demo = ["demo", "--out", str(out), "--methods", SMALL_TABLE_METHODS[args.table], "--seed", str(args.seed)]
    if args.table != "table1":
        demo.append("--no-figures")
    if main(demo) != 0:
        return 2
    table = out / "table.md"
    if args.table != "table1":
        if main(["bench-small", "--demo", str(out), "--out", str(out / "bench"), "--seed", str(args.seed)]) != 0:
            return 2
        table = out / "bench" / "table.md"
    shutil.copyfile(table, Path(args.out) / f"{args.table}.md")
    print(f"wrote {Path(args.out) / f'{args.table}.md'}")
    return 0


def _setup_logging() -> None:
    import logging

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefopt", description="Offline preference optimisation: f-PO, γ-PO and their baselines."
    )
    parser.add_argument("--version", action="version", version=f"prefopt {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    losses = commands.add_parser("losses", help="list the registered losses and their hyper-parameters")
    losses.add_argument("-v", "--verbose", action="store_true", help="also list each loss's hyper-parameters")
    losses.set_defaults(func=_list_losses)
    train = commands.add_parser(
        "train",
        help="train one preference-optimisation run",
        description="Train one run from a YAML config; override any field with --section.key value (or --key value "
        "when the name is unique), e.g. prefopt train cfg.yaml --loss.beta 2.5 --max_steps 10. Launch with "
        "accelerate launch -m prefopt.cli train ... for several GPUs or DeepSpeed.",
    )
    train.add_argument("config", help="YAML config file (sections: model, data, loss, margins, train)")
    train.add_argument("overrides", nargs=argparse.REMAINDER, help="--section.key value ...")
    train.set_defaults(func=_train)
    sft = commands.add_parser("sft", help="supervised fine-tuning on chosen responses (same config as train)")
    sft.add_argument("config")
    sft.add_argument("overrides", nargs=argparse.REMAINDER)
    sft.set_defaults(func=_sft)
    rm = commands.add_parser("rm", help="train a Bradley–Terry reward model (same config as train; no loss section)")
    rm.add_argument("config")
    rm.add_argument("overrides", nargs=argparse.REMAINDER)
    rm.set_defaults(func=_rm)
    inspect = commands.add_parser(
        "inspect-data", help="show the first rows of a config's data as the trainer tokenises and scores them",
        description="Tokenise the first rows of a config's data exactly as `prefopt train` would (data.tokenization, "
        "chat template, truncation) and show the decoded prompt and each response's scored span between ⟦ ⟧, with "
        "token counts; no model is loaded. Options: " + "; ".join(
            f"{' '.join(a.option_strings)}: {a.help}" for a in _inspect_parser()._actions) + ". Any other "
        "--section.key value overrides the config, as for train.",
    )
    inspect.add_argument("config", help="a training (or, with --stage rm, reward-model) YAML config")
    inspect.add_argument("overrides", nargs=argparse.REMAINDER,
                         help="--rows N, --json, --split train|eval, --stage train|sft|rm, --section.key value ...")
    inspect.set_defaults(func=_inspect_data)
    sample = commands.add_parser("sample", help="K completions per unique prompt → {prompt, completions} JSONL")
    sample.add_argument("model", help="model folder or Hub name")
    sample.add_argument("prompts", help="rows with a prompt, in any of prefopt's data formats: " + DATA_SOURCE_HELP)
    sample.add_argument("out", help="output JSONL")
    sample.add_argument("--k", type=int, default=4)
    sample.add_argument("--temperature", type=float, default=0.8)
    sample.add_argument("--top-k", type=int, default=0)
    sample.add_argument("--top-p", type=float, default=1.0)
    sample.add_argument("--max-new-tokens", type=int, default=64)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch-size", type=int, default=16)
    sample.add_argument("--limit", type=int, default=None, help="first N unique prompts")
    sample.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"])
    sample.add_argument("--chat-template", default="auto", choices=["auto", "always", "never"], help=CHAT_TEMPLATE_HELP)
    _add_data_source(sample)
    sample.set_defaults(func=_sample)
    from prefopt.onpolicy import DEFAULTS as ONPOLICY

    onpolicy = commands.add_parser(
        "onpolicy", help="SimPO's on-policy preference data: N samples per prompt, scored by a reward model, best vs worst",
        description="Sample N responses per unique prompt from MODEL (each prompt as one user turn through its chat "
        "template; vLLM when installed, else transformers), score each with a sequence-classification reward model "
        "through the reward model's own chat template, keep the highest-scoring as chosen and the lowest as rejected, "
        "and write princeton-nlp/*-ultrafeedback-armorm rows (prompt_id, prompt, all_generated_responses, "
        "all_rm_scores, chosen, rejected). Prompts with N identical responses, or with all scores equal, are dropped "
        "and counted. Resumable: a killed run started again keeps its finished chunks (OUT.partial.jsonl).")
    onpolicy.add_argument("model", help="the instruct model (folder or Hub name)")
    onpolicy.add_argument("out", help="output JSONL")
    onpolicy.add_argument("--prompts", default=ONPOLICY["prompts"], help="prompt rows: " + DATA_SOURCE_HELP +
                          f" (default {ONPOLICY['prompts']})")
    _add_data_source(onpolicy, split=ONPOLICY["split"])
    onpolicy.add_argument("--rm", default=ONPOLICY["reward_model"], help=f"reward model (default {ONPOLICY['reward_model']})")
    onpolicy.add_argument("--no-trust-remote-code", action="store_true",
                          help="do not run the reward model's own code (ArmoRM needs it)")
    onpolicy.add_argument("--n", type=int, default=ONPOLICY["n"], help="responses per prompt (SimPO: 5)")
    onpolicy.add_argument("--temperature", type=float, default=ONPOLICY["temperature"])
    onpolicy.add_argument("--top-p", type=float, default=ONPOLICY["top_p"])
    onpolicy.add_argument("--max-new-tokens", type=int, default=ONPOLICY["max_new_tokens"])
    onpolicy.add_argument("--seed", type=int, default=0)
    onpolicy.add_argument("--batch-size", type=int, default=16, help="sequences per generation forward (hf backend)")
    onpolicy.add_argument("--rm-batch-size", type=int, default=1,
                          help="sequences per reward-model forward (1, unpadded, as the official script)")
    onpolicy.add_argument("--chunk-size", type=int, default=256, help="prompts per resumable chunk")
    onpolicy.add_argument("--limit", type=int, default=None, help="the first N of the sorted unique prompts")
    onpolicy.add_argument("--backend", default="auto", choices=["auto", "hf", "vllm"])
    onpolicy.add_argument("--overwrite", action="store_true", help="replace OUT and any partial run of it")
    onpolicy.set_defaults(func=_onpolicy)
    label = commands.add_parser("label", help="score sampled completions with a reward model → {…, rewards}")
    label.add_argument("rm")
    label.add_argument("samples", help="{prompt, completions} rows (prefopt sample's output): " + DATA_SOURCE_HELP)
    label.add_argument("out")
    label.add_argument("--batch-size", type=int, default=32)
    label.add_argument("--chat-template", default=None, choices=["auto", "always", "never"],
                       help=CHAT_TEMPLATE_HELP + "; default: the rule the reward model was trained with")
    _add_data_source(label, format_help=False)
    label.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never SAMPLES itself)")
    label.set_defaults(func=_label)
    to_rw = commands.add_parser("pref-to-rw", help="pairs → K = 2 rw rows with rewards [1, 0] (the pref setting)")
    to_rw.add_argument("pairs")
    to_rw.add_argument("out")
    to_rw.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never PAIRS itself)")
    to_rw.set_defaults(func=_pref_to_rw)
    mean = commands.add_parser("mean-reward", help="a reward model's mean reward of a policy's samples")
    mean.add_argument("rm")
    mean.add_argument("samples")
    mean.add_argument("--out", default=None, help="also write the result as JSON here")
    mean.set_defaults(func=_mean_reward)
    judge = commands.add_parser(
        "judge", help="pairwise LLM judge: a policy's samples against a baseline, both orders",
        description="Endpoint from PREFOPT_JUDGE_BASE_URL / PREFOPT_JUDGE_MODEL / PREFOPT_JUDGE_API_KEY (or "
        "OPENAI_API_KEY); answers are cached on disk (PREFOPT_JUDGE_CACHE), so a rerun pays for nothing twice.",
    )
    judge.add_argument("policy", help="the policy's {prompt, completions} samples")
    judge.add_argument("baseline", help="SFT samples ({prompt, completions}) or, with --baseline-kind chosen, pairs "
                       "data: " + DATA_SOURCE_HELP.replace("--", "--baseline-"))
    judge.add_argument("out", help="output folder: judgements.jsonl and winrate.json")
    judge.add_argument("--template", default="hh_helpfulness", help="hh_helpfulness, tldr_summary or a file")
    judge.add_argument("--baseline-kind", default="samples", choices=["samples", "chosen"])
    _add_data_source(judge, split="test", prefix="baseline")
    judge.add_argument("--n-prompts", type=int, default=100)
    judge.add_argument("--seed", type=int, default=0)
    judge.add_argument("--workers", type=int, default=8)
    judge.add_argument("--model", default=None, help="judge model (default: PREFOPT_JUDGE_MODEL)")
    judge.add_argument("--base-url", default=None, help="judge endpoint (default: PREFOPT_JUDGE_BASE_URL or OpenAI)")
    judge.set_defaults(func=_judge)
    demo = commands.add_parser("demo", help="the whole pipeline on the small world (CPU, minutes): table and figures")
    demo.add_argument("--out", default="results/demo", help="output folder (default: results/demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--noise", type=float, default=0.1, help="fraction of flipped preference labels")
    demo.add_argument("--methods", default="", help="comma-separated subset of the demo's methods")
    demo.add_argument("--quick", action="store_true", help="64 held-out prompts instead of 128 (the test suite's demo)")
    demo.add_argument("--no-figures", action="store_true", help="skip drawing the figures")
    demo.set_defaults(func=_demo)
    sweep = commands.add_parser("noise-sweep", help="win rate against SFT versus the fraction of flipped labels")
    sweep.add_argument("--out", default="results/noise")
    sweep.add_argument("--noise-levels", default="0,0.1,0.2,0.3,0.4")
    sweep.add_argument("--seeds", default="0,1,2")
    sweep.add_argument("--methods", default="", help="default: dpo,simpo,gamma_dpo,gamma_simpo,alphapo")
    sweep.set_defaults(func=_noise_sweep)
    claims = commands.add_parser(
        "claims", help="the f-PO and γ-PO claims tested in the small world with paired seeds (table.md, figures)",
        description="Trains every method of the claims on paired seeds (shared SFT model, candidates and labels per "
                    "seed), then writes table.md (effect, 95%% interval, MDE and verdict per test), metrics.json and "
                    "one figure per claim. Finished runs are reused: rerunning after an interruption continues.")
    claims.add_argument("--out", default="results/claims", help="output folder (default: results/claims)")
    claims.add_argument("--quick", action="store_true", help="3 seeds, 2-3 points per sweep, fewer prompts (about 4 minutes)")
    claims.add_argument("--seeds", default="", help="comma-separated seeds (default: 0-7, --quick: 0,1,2)")
    claims.set_defaults(func=_claims)
    small = commands.add_parser(
        "bench-small", help="AlpacaEval 2, Arena-Hard and MT-Bench in the small world, on the demo's trained policies")
    small.add_argument("--demo", default="results/demo", help="a demo output folder (make demo)")
    small.add_argument("--out", default="results/demo/bench", help="results folder")
    small.add_argument("--methods", default="", help="comma-separated subset of the demo's methods (default: all)")
    small.add_argument("--n-prompts", type=int, default=64)
    small.add_argument("--seed", type=int, default=0)
    small.set_defaults(func=_bench_small)
    from prefopt.benchmarks.runner import add_bench_parsers  # paper-scale entry points: bench-generate, bench-score

    add_bench_parsers(commands)
    table = commands.add_parser("bench-table", help="the benchmark table (Markdown or LaTeX) from result JSON files")
    table.add_argument("results", help="a folder of <model>/<benchmark>.json results")
    table.add_argument("--latex", action="store_true")
    table.add_argument("--out", default=None)
    table.add_argument("--reference", default=None,
                       help="public numbers shown beside ours, marked as such (JSON file: {label: {alpaca_eval_lc, ...}})")
    table.add_argument("--allow-mixed-rules", action="store_true",
                       help="allow rows scored under different rules (verdict, bootstrap, rating parse) in one table; "
                            "each rule is then footnoted with its models")
    table.set_defaults(func=_bench_table)
    table1 = commands.add_parser(
        "table1", help="Table 1 (win rates vs SFT and vs chosen, RM reward) from the Table 1 run folders",
        description="Reads <dataset>_<setting>_<method>/eval_<checkpoint>/{vs_sft,vs_chosen}/winrate.json and "
        "mean_reward.json (and eval/<dataset>/sft_mean_reward.json) below RESULTS_DIR, as run/common.sh writes them; "
        "a missing file is a '–' cell.")
    table1.add_argument("results", nargs="?", default="results/table1", help="default: results/table1")
    table1.add_argument("--checkpoint", default="final", help="the evaluated checkpoint (eval_<checkpoint>/)")
    table1.add_argument("--latex", action="store_true", help="a LaTeX tabular instead of Markdown")
    table1.add_argument("--out", default=None, help="also write the table to this file")
    table1.set_defaults(func=_table1)
    small_table = commands.add_parser("small-table", help="a paper table's methods and columns in the small world")
    small_table.add_argument("table", choices=sorted(SMALL_TABLE_METHODS))
    small_table.add_argument("--out", default="results/small")
    small_table.add_argument("--seed", type=int, default=0)
    small_table.set_defaults(func=_small_table)
    figs = commands.add_parser("figures", help="redraw a demo's figures from its run folders (prefopt.plots)")
    figs.add_argument("results", nargs="?", default="results/demo")
    figs.set_defaults(func=_figures)
    pre = commands.add_parser("preflight", help="check that a paper-scale table can run here (GPU, Hub, judge)")
    pre.add_argument("what", help="the table, for the message (table1, table2, table3)")
    pre.add_argument("--needs", default="gpu,hub,judge")
    pre.add_argument("--hub-probe", default="EleutherAI/pythia-2.8b", help="a Hub model to look up")
    pre.set_defaults(func=_preflight)
    tiny = commands.add_parser("tiny", help="write a tiny model, data and configs to try `prefopt train` offline")
    tiny.add_argument("directory", help="folder to write into (new or empty)")
    tiny.add_argument("--overwrite", action="store_true", help="write into a non-empty folder, replacing our files")
    tiny.set_defaults(func=_tiny)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = ["prefopt", *map(str, argv)]  # the command line as typed, for the provenance record (prefopt.runs)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from prefopt.errors import PrefoptError

    try:
        return args.func(args)
    except PrefoptError as error:  # the user's input, model, data or endpoint: one line, no traceback; else a bug
        print(f"prefopt {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Tear down a torch.distributed process group a stage left open (accelerate never destroys its own). Left to
    the interpreter's exit, gloo's worker threads can be destroyed while still joinable: the rank then aborts with
    "terminate called without an active exception" after a finished run, and torchrun reports the run as failed
    (seen once in CI on a loaded 2-core machine). Destroying the group is local to each rank (no collective)."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
