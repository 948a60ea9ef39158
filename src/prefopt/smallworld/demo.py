"""``make demo``: the Table 1 pipeline in miniature, on a CPU in minutes, with a known reward (SPEC §6.1, §8, §9).

world (tokenizer, tiny GPT-NeoX, prompts, SFT data) → SFT → sample K = 4 completions per prompt → label by the hidden
reward (rw) and by a noisy Bradley–Terry draw (pref) → train every method from the SFT model → sample from each policy
on held-out prompts → hidden-reward judge (win rate against SFT and against the dataset's chosen response, both
orders, through :func:`prefopt.evaluation.judge_win_rate` like the paper's judge stage), mean hidden reward and KL to
the reference → table and metrics. Drawing the figures is the caller's (``prefopt demo`` calls
:func:`prefopt.plots.draw_demo_figures` on the run folders); nothing here draws.

Every stage writes its outputs and then a ``stage.json``, written atomically last, holding its ``key`` (the hash of
everything it depends on: settings and the upstream stages' tokens) and the fingerprints of its ``outputs``
(:mod:`prefopt.fingerprints`). A rerun skips a stage only when the key matches AND every output still has its recorded
fingerprint; otherwise it redoes it (saying which output changed). A stage's token, which goes into its downstream
stages' keys, hashes its key and the fingerprints of the outputs they read (for a training run, its ``final`` model):
a stage rebuilt with different outputs (a retrained model) redoes every stage downstream of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from tqdm.auto import tqdm

from prefopt.evaluation import judge_win_rate
from prefopt.fingerprints import digest, record_outputs, verify_outputs
from prefopt.io import read_jsonl, write_json, write_jsonl
from prefopt.runs import utc_now
from prefopt.smallworld.world import HiddenRewardJudge, SmallWorld, WorldConfig
from prefopt.winrate import mean_and_ci

logger = logging.getLogger(__name__)

#: Part of every stage key: bump it when a stage's code changes what it writes, so old outputs are not reused.
PIPELINE_VERSION = 3


@dataclass(frozen=True)
class Method:
    label: str
    data: str  # "pref" (noisy pairs), "rw" (K candidates with hidden-reward scores)
    loss: dict
    train: dict = field(default_factory=dict)
    margins: dict = field(default_factory=dict)  # the γ-PO margins section (tau, ...) of the config


#: The methods of the demo, in table order. Hyper-parameters were picked for this tiny world (see the README).
METHODS: dict[str, Method] = {
    "dpo": Method("DPO", "pref", {"name": "dpo", "beta": 0.1}),
    "ipo": Method("IPO", "pref", {"name": "ipo", "tau": 0.5}),
    "simpo": Method("SimPO", "pref", {"name": "simpo", "beta": 2.0, "gamma_beta_ratio": 0.5}),
    "exo_rw": Method("EXO (rw)", "rw", {"name": "exo", "beta_pi": 0.5, "beta_r": 0.1}),
    "exo_pref": Method("EXO (pref)", "pref", {"name": "exo", "beta_pi": 0.5, "setting": "pref"}),
    "fpo_alpha_rw": Method("f-PO α=0.1 (rw)", "rw",
                           {"name": "fpo", "divergence": "alpha", "alpha": 0.1, "beta_pi": 0.35, "beta_r": 0.1}),
    "fpo_alpha_pref": Method("f-PO α=0.1 (pref)", "pref",
                             {"name": "fpo", "divergence": "alpha", "alpha": 0.1, "beta_pi": 0.5, "setting": "pref"}),
    "fpo_js": Method("f-PO JS (rw)", "rw", {"name": "fpo", "divergence": "js", "beta_pi": 0.35, "beta_r": 0.1}),
    "fpo_jeffreys": Method("f-PO Jeffreys (rw)", "rw",
                           {"name": "fpo", "divergence": "jeffreys", "beta_pi": 0.35, "beta_r": 0.1}),
    "fpo_hellinger": Method("f-PO Hellinger (rw)", "rw",
                            {"name": "fpo", "divergence": "hellinger", "beta_pi": 0.35, "beta_r": 0.1}),
    "alphapo": Method("α-PO α=0.99 (ref-free)", "pref",
                      {"name": "alphapo", "alpha": 0.99, "beta": 2.0, "gamma_beta_ratio": 0.5}),
    "gamma_simpo": Method("γ-SimPO", "pref", {"name": "gamma_simpo", "beta": 2.0, "gamma_beta_ratio": 0.5},
                          margins={"tau": 2.0}),
    "gamma_dpo": Method("γ-DPO", "pref", {"name": "gamma_dpo", "beta": 0.1, "gamma_beta_ratio": 10.0},
                        margins={"tau": 2.0}),
}


@dataclass(frozen=True)
class DemoSettings:
    out: str = "results/demo"
    seed: int = 0
    noise: float = 0.1  # fraction of flipped preference labels
    methods: tuple[str, ...] = tuple(METHODS)
    world: WorldConfig = field(default_factory=WorldConfig)
    # sizes
    n_train_prompts: int = 512
    n_test_prompts: int = 128
    sft_per_prompt: int = 4
    k: int = 4
    eval_samples: int = 2
    # model
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    # stages
    sft_epochs: float = 3.0
    sft_learning_rate: float = 3e-3
    pref_epochs: float = 2.0
    pref_learning_rate: float = 2e-4  # 5e-4 was unstable: SimPO moved 70-89 points with the data order (README)
    batch_size: int = 16
    sample_temperature: float = 0.8  # SPEC §6.1: temperature 0.8, top_k 0, for data and evaluation alike
    max_new_tokens: int = 16
    bt_temperature: float = 0.1
    near_ties: Optional[float] = None  # pairing rule of the pref labels (SmallWorld.label): None = random pairs

    def key(self, *parts: Any) -> str:
        return _hash([PIPELINE_VERSION, parts])


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------------
# Stage bookkeeping
# ----------------------------------------------------------------------------------------------------------------------


def _token(key: str, outputs: dict, passed: Optional[Sequence[str]] = None) -> str:
    """What downstream stages put into their keys: this stage's key and the fingerprints of the outputs they read
    (``passed``; every output when None)."""
    return _hash([key, digest({k: v for k, v in outputs.items() if passed is None or k in passed})])


def _stage_done(folder: Path, key: str, passed: Optional[Sequence[str]] = None) -> Optional[str]:
    """The stage's token when ``folder/stage.json`` has ``key`` and every recorded output still has its fingerprint;
    None (redo the stage) otherwise, with one log line when outputs changed under a matching key."""
    marker = folder / "stage.json"
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        logger.warning("demo: redoing %s: unreadable stage.json", folder)
        return None
    if info.get("key") != key:
        logger.info("demo: redoing %s: its settings or inputs changed", folder)
        return None
    problem = verify_outputs(info.get("outputs"), root=folder)
    if problem:
        logger.warning("demo: redoing %s: output %s", folder, problem)
        return None
    return _token(key, info["outputs"], passed)


def _mark_done(folder: Path, key: str, outputs: Sequence[str], passed: Optional[Sequence[str]] = None,
               **info) -> str:
    """Record the fingerprints of ``outputs`` (paths relative to ``folder``) with ``key``; returns the token."""
    recorded = record_outputs(outputs, root=folder)
    missing = [name for name, fp in recorded.items() if fp is None]
    if missing:
        raise RuntimeError(f"stage {folder} did not write {missing}")
    write_json(folder / "stage.json", {"key": key, "finished": utc_now(), "outputs": recorded, **info})
    return _token(key, recorded, passed)


def _training_outputs(folder: Path) -> list[str]:
    """What a training run leaves that later stages and the figures read: the model and the logs."""
    return ["final", "metrics.jsonl", *(["margins.jsonl"] if (folder / "margins.jsonl").is_file() else [])]


# ----------------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------------


class Pipeline:
    """The demo's stages over one output layout: ``shared`` holds what does not depend on the label noise (world,
    SFT, samples), ``labelled`` what does (data, the preference runs and SFT's evaluation). For the demo both are
    ``settings.out``. ``methods`` adds run names of the caller's own to :data:`METHODS` (``make claims``)."""

    def __init__(self, settings: DemoSettings, shared: Optional[Path] = None, labelled: Optional[Path] = None,
                 methods: Optional[dict[str, Method]] = None):
        self.s = settings
        self.methods = {**METHODS, **(methods or {})}  # the demo's methods and a caller's own (make claims)
        self.shared = Path(shared or settings.out)
        self.labelled = Path(labelled or settings.out)
        self.world = SmallWorld(settings.world)
        self.timings: dict[str, float] = {}
        self.tokens: dict[str, str] = {}  # eval stage tokens, by "eval:<run>"

    # -- 1. world -------------------------------------------------------------------------------------------------
    def world_stage(self) -> str:
        s, folder = self.s, self.shared / "world"
        key = s.key("world", s.world.to_dict(), s.seed, s.n_train_prompts, s.n_test_prompts, s.sft_per_prompt,
                    s.hidden_size, s.num_layers, s.num_heads)
        outputs = ["base_model", "prompts_train.jsonl", "prompts_test.jsonl", "sft.jsonl"]
        token = _stage_done(folder, key)
        if token:
            return token
        from prefopt.tiny import build_model

        tokenizer = self.world.tokenizer()
        model = build_model(tokenizer, hidden_size=s.hidden_size, num_layers=s.num_layers, num_heads=s.num_heads,
                            max_position_embeddings=128, seed=s.seed)
        model.save_pretrained(folder / "base_model")
        tokenizer.save_pretrained(folder / "base_model")
        prompts = self.world.prompts(s.n_train_prompts + s.n_test_prompts, seed=s.seed)
        train, test = prompts[: s.n_train_prompts], prompts[s.n_train_prompts:]
        write_jsonl(folder / "prompts_train.jsonl", train)
        write_jsonl(folder / "prompts_test.jsonl", test)
        write_jsonl(folder / "sft.jsonl", self.world.sft_rows(train, per_prompt=s.sft_per_prompt, seed=s.seed))
        return _mark_done(folder, key, outputs, world=s.world.to_dict())

    # -- 2. SFT ---------------------------------------------------------------------------------------------------
    def sft_stage(self, upstream: str) -> str:
        s, folder = self.s, self.shared / "runs" / "sft"
        train = {"num_train_epochs": s.sft_epochs, "learning_rate": s.sft_learning_rate, "warmup_ratio": 0.05}
        key = s.key("sft", upstream, train, s.batch_size)
        token = _stage_done(folder, key, passed=["final"])
        if token:
            return token
        self._train(folder, self.shared / "world" / "base_model", self.shared / "world" / "sft.jsonl",
                    {"name": "sft"}, dict(train, run_name="sft"), data_format="sft")
        return _mark_done(folder, key, _training_outputs(folder), passed=["final"])

    # -- 3. samples from the SFT model ----------------------------------------------------------------------------
    def sample_stage(self, upstream: str) -> str:
        s, folder = self.s, self.shared / "samples"
        key = s.key("samples", upstream, s.k, s.eval_samples, s.sample_temperature, s.max_new_tokens)
        token = _stage_done(folder, key)
        if token:
            return token
        model_dir = self.shared / "runs" / "sft" / "final"
        for name, k in (("train", s.k), ("test", s.k)):
            prompts = read_jsonl(self.shared / "world" / f"prompts_{name}.jsonl")
            completions = self._generate(model_dir, [p["prompt"] for p in prompts], k=k, seed=s.seed + 1)
            write_jsonl(folder / f"{name}.jsonl", [
                {"id": p["id"], "prompt": p["prompt"], "completions": c} for p, c in zip(prompts, completions)
            ])
        return _mark_done(folder, key, ["train.jsonl", "test.jsonl"])

    # -- 4. labels ------------------------------------------------------------------------------------------------
    def label_stage(self, upstream: str) -> str:
        s, folder = self.s, self.labelled / "data"
        # the pairing rule joins the key only when set, so the demo's existing label folders stay valid
        key = s.key("labels", upstream, s.noise, s.bt_temperature, *([s.near_ties] if s.near_ties is not None else []))
        token = _stage_done(folder, key)
        if token:
            return token
        stats = {}
        for name in ("train", "test"):
            samples = read_jsonl(self.shared / "samples" / f"{name}.jsonl")
            rw, pref, stats[name] = self.world.label(samples, noise=s.noise, seed=s.seed + (name == "test"),
                                                     bt_temperature=s.bt_temperature, near_ties=s.near_ties)
            write_jsonl(folder / f"rw_{name}.jsonl", rw)
            write_jsonl(folder / f"pref_{name}.jsonl", pref)
        write_json(folder / "label_stats.json", stats)
        outputs = [f"{kind}_{name}.jsonl" for name in ("train", "test") for kind in ("rw", "pref")]
        return _mark_done(folder, key, [*outputs, "label_stats.json"], stats=stats)

    # -- 5. preference training -----------------------------------------------------------------------------------
    def method_stage(self, name: str, upstream: str) -> str:
        s, method = self.s, self.methods[name]
        folder = self.labelled / "runs" / name
        train = {"num_train_epochs": s.pref_epochs, "learning_rate": s.pref_learning_rate, "warmup_ratio": 0.1,
                 "margin_log_every": 1, **method.train}
        key = s.key("method", upstream, name, asdict(method), train, s.batch_size)
        token = _stage_done(folder, key, passed=["final"])
        if token:
            return token
        data = self.labelled / "data" / f"{method.data}_train.jsonl"
        self._train(folder, self.shared / "runs" / "sft" / "final", data, method.loss, dict(train, run_name=name),
                    margins=method.margins)
        return _mark_done(folder, key, _training_outputs(folder), passed=["final"])

    # -- 6. evaluation --------------------------------------------------------------------------------------------
    def eval_stage(self, name: str, upstream: str, label: str) -> dict:
        """Evaluate run ``name``; ``upstream`` holds the tokens of what it reads (its model, the labels, and for a
        policy the SFT evaluation's samples). The stage's own token goes to ``self.tokens["eval:<name>"]``."""
        s = self.s
        # SFT's evaluation depends on the labels too (its win rate against the chosen responses): it is written beside
        # the labelled runs, so label regimes sharing one SFT model (noise sweep, claims) do not overwrite each other
        folder = self.labelled / "runs" / name
        model_dir = (self.shared if name == "sft" else self.labelled) / "runs" / name / "final"
        key = s.key("eval", upstream, s.eval_samples, s.sample_temperature, s.max_new_tokens)
        outputs = ["../eval.json", "../samples_test.jsonl"]
        token = _stage_done(folder / "eval", key)
        if token:
            self.tokens[f"eval:{name}"] = token
            return json.loads((folder / "eval.json").read_text())
        prompts = read_jsonl(self.shared / "world" / "prompts_test.jsonl")
        completions = self._generate(model_dir, [p["prompt"] for p in prompts], k=s.eval_samples, seed=s.seed + 2)
        write_jsonl(folder / "samples_test.jsonl",
                     [{"id": p["id"], "prompt": p["prompt"], "completions": c} for p, c in zip(prompts, completions)])
        result = self._evaluate(name, label, prompts, completions, model_dir)
        write_json(folder / "eval.json", result)
        self.tokens[f"eval:{name}"] = _mark_done(folder / "eval", key, outputs)
        return result

    def _evaluate(self, name, label, prompts, completions, model_dir) -> dict:
        from prefopt.scoring import kl_to_reference

        world, judge = self.world, HiddenRewardJudge(self.world)
        rewards = [world.hidden_reward(p["prompt"], c) for p, cs in zip(prompts, completions) for c in cs]
        lengths = [world.reward_terms(p["prompt"], c)["words"] for p, cs in zip(prompts, completions) for c in cs]
        reference = self.shared / "runs" / "sft" / "final"
        kl_values = [0.0] * len(rewards) if name == "sft" else kl_to_reference(
            model_dir, reference, [p["prompt"] for p in prompts], completions)
        sft_file = self.labelled / "runs" / "sft" / "samples_test.jsonl"
        sft_samples = {r["id"]: r["completions"] for r in read_jsonl(sft_file)} \
            if name != "sft" else {p["id"]: cs for p, cs in zip(prompts, completions)}
        chosen = {json.dumps(r["prompt"]): r["chosen"] for r in read_jsonl(self.labelled / "data" / "pref_test.jsonl")}
        vs_sft, vs_chosen = [], []  # (prompt, policy response, baseline response) triples, judged in both orders
        for p, cs in zip(prompts, completions):
            for j, completion in enumerate(cs):
                vs_sft.append((p["prompt"], completion, sft_samples[p["id"]][j]))
                if json.dumps(p["prompt"]) in chosen:
                    vs_chosen.append((p["prompt"], completion, chosen[json.dumps(p["prompt"])]))
        mean_reward, reward_ci = mean_and_ci(rewards)
        kl, kl_ci = mean_and_ci(kl_values)
        return {
            "method": name, "label": label, "n_prompts": len(prompts), "n_samples": len(rewards),
            "mean_hidden_reward": mean_reward, "mean_hidden_reward_ci": list(reward_ci),
            "kl_to_reference": kl, "kl_to_reference_ci": list(kl_ci),
            "mean_length": sum(lengths) / len(lengths),
            "win_rate_vs_sft": judge_win_rate(judge, vs_sft, seed=self.s.seed, progress=False)[1].to_dict(),
            "win_rate_vs_chosen": judge_win_rate(judge, vs_chosen, seed=self.s.seed, progress=False)[1].to_dict(),
            "judge": judge.name, "noise": self.s.noise, "seed": self.s.seed,
        }

    # -- helpers --------------------------------------------------------------------------------------------------
    def _train(self, folder: Path, model: Path, data: Path, loss: dict, train: dict, data_format: str = "auto",
               margins: Optional[dict] = None):
        from prefopt.config import load_config
        from prefopt.train import run_training

        s = self.s
        config = load_config(None, [], base={
            "model": {"name_or_path": str(model), "dtype": "float32"},
            "data": {"train": str(data), "format": data_format, "max_length": 64, "max_prompt_length": 32},
            "loss": loss,
            **({"margins": margins} if margins else {}),
            "train": {"output_dir": str(folder), "seed": s.seed, "per_device_train_batch_size": s.batch_size,
                      "logging_steps": 1, "report_to": ["none"], "overwrite": True, "use_cpu": True, "quiet": True,
                      "lr_scheduler_type": "cosine", **train},
        })
        started = time.time()
        run_training(config, argv=["prefopt", "demo"])
        self.timings[f"train:{folder.name}"] = time.time() - started

    def _generate(self, model_dir: Path, prompts: list, *, k: int, seed: int) -> list[list[str]]:
        from prefopt.sample import generate, load_model, load_tokenizer

        # the demo is a CPU run end to end (training uses use_cpu too): same seed, same table, on any machine
        tokenizer = load_tokenizer(str(model_dir))
        model = load_model(str(model_dir), dtype="float32", device="cpu")
        started = time.time()
        out = generate(model, tokenizer, prompts, k=k, temperature=self.s.sample_temperature, top_k=0,
                       max_new_tokens=self.s.max_new_tokens, seed=seed, batch_size=64, progress=False)
        self.timings[f"sample:{model_dir.parent.name}"] = self.timings.get(f"sample:{model_dir.parent.name}", 0) + \
            time.time() - started
        return out

    # -- all ------------------------------------------------------------------------------------------------------
    def run(self, *, progress: bool = True) -> dict[str, dict]:
        s = self.s
        unknown = [m for m in s.methods if m not in self.methods]
        if unknown:
            raise ValueError(f"unknown demo methods {unknown}; choose from {', '.join(self.methods)}")
        steps = ["world", "sft", "samples", "labels", *s.methods, "evaluation"]
        bar = tqdm(total=len(steps), desc="demo", disable=not progress, unit="stage")

        def advance(name):
            bar.set_postfix_str(name)
            bar.update(1)

        world = self.world_stage(); advance("world")
        sft = self.sft_stage(world); advance("sft")
        samples = self.sample_stage(sft); advance("samples")
        labels = self.label_stage(samples); advance("labels")
        method_keys = {}
        for name in s.methods:
            method_keys[name] = self.method_stage(name, labels)
            advance(name)
        # an evaluation reads its model (the run's token hashes its `final` folder), the labelled test pairs, and for
        # a policy the SFT evaluation's samples (its baseline) and the SFT model (the KL reference)
        results = {"sft": self.eval_stage("sft", sft + labels, "SFT")}
        for name in s.methods:
            results[name] = self.eval_stage(name, method_keys[name] + labels + sft + self.tokens["eval:sft"],
                                            self.methods[name].label)
        advance("evaluation")
        bar.close()
        return results


# ----------------------------------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def render_table(results: dict[str, dict], settings: DemoSettings, label_stats: Optional[dict] = None) -> str:
    first = next(iter(results.values()))
    lines = [
        f"# Small-world demo (seed {settings.seed}, {100 * settings.noise:.0f}% flipped labels)",
        "",
        f"{first['n_prompts']} held-out prompts × {settings.eval_samples} samples (temperature "
        f"{settings.sample_temperature}); judge: the hidden reward, each pair judged in both orders; "
        "win rates in %, ties count ½ (95% bootstrap interval over prompts); KL = mean log π(y) − log π_SFT(y) "
        "on the policy's samples.",
        "",
        "| method | hidden reward (95% CI) | KL to SFT | words | win rate vs SFT | win rate vs chosen | ties vs SFT |",
        "|---|---|---:|---:|---|---|---:|",
    ]
    for name, r in results.items():
        ws, wc = r["win_rate_vs_sft"], r["win_rate_vs_chosen"]
        lo, hi = r["mean_hidden_reward_ci"]
        vs_sft = "—" if name == "sft" else f"{_pct(ws['win_rate'])} ({_pct(ws['ci'][0])}–{_pct(ws['ci'][1])})"
        ties = "—" if name == "sft" else _pct(ws["ties"] / ws["n"])
        lines.append(
            f"| {r['label']} | {r['mean_hidden_reward']:.3f} ({lo:.3f}, {hi:.3f}) | {r['kl_to_reference']:.2f} | "
            f"{r['mean_length']:.1f} | {vs_sft} | "
            f"{_pct(wc['win_rate'])} ({_pct(wc['ci'][0])}–{_pct(wc['ci'][1])}) | {ties} |"
        )
    if label_stats:
        train = label_stats["train"]
        lines += ["", f"Training pairs: {train['pairs']} ({train['flipped']} labels flipped; "
                      f"{100 * train['label_agrees_with_reward']:.1f}% agree with the hidden reward)."]
    return "\n".join(lines) + "\n"


def run_demo(settings: DemoSettings, *, progress: bool = True) -> dict:
    """Every stage of the demo (each skipped when done), then ``table.md`` and ``metrics.json`` in ``settings.out``;
    returns the metrics. The figures are drawn by the caller from ``<out>/runs`` (:func:`prefopt.plots`)."""
    started = time.time()
    out = Path(settings.out)
    pipeline = Pipeline(settings)
    results = pipeline.run(progress=progress)
    label_stats = json.loads((out / "data" / "label_stats.json").read_text())
    table = render_table(results, settings, label_stats)
    (out / "table.md").write_text(table)
    metrics = {"settings": asdict(settings), "results": results, "label_stats": label_stats,
               "timings_seconds": pipeline.timings, "wall_seconds": time.time() - started}
    write_json(out / "metrics.json", metrics)
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# Noise sweep (γ-PO's claim: robustness to noisy and ambiguous pairs)
# ----------------------------------------------------------------------------------------------------------------------

NOISE_METHODS = ("dpo", "simpo", "gamma_dpo", "gamma_simpo", "alphapo")


def run_noise_sweep(
    out: str | Path = "results/noise",
    *,
    noise_levels: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4),
    seeds: Sequence[int] = (0, 1, 2),
    methods: Sequence[str] = NOISE_METHODS,
    base: Optional[DemoSettings] = None,
    progress: bool = True,
) -> dict:
    """Every (seed, noise level, method): SFT and samples are shared per seed, labels and runs per noise level.
    Writes ``table.md`` and ``metrics.json``; the figure is the caller's (:func:`prefopt.plots.draw_noise_sweep`)."""
    started = time.time()
    out = Path(out)
    base = base or DemoSettings()
    rows = []
    combos = [(seed, noise) for seed in seeds for noise in noise_levels]
    for seed, noise in tqdm(combos, desc="noise sweep", disable=not progress, unit="setting"):
        settings = replace(base, seed=seed, noise=noise, methods=tuple(methods), out=str(out / f"seed{seed}"))
        pipeline = Pipeline(settings, shared=out / f"seed{seed}", labelled=out / f"seed{seed}" / f"noise{noise:g}")
        for method, result in pipeline.run(progress=False).items():
            rows.append({"seed": seed, "noise": noise, "method": method, "label": result["label"],
                         "win_rate_vs_sft": result["win_rate_vs_sft"]["win_rate"],
                         "mean_hidden_reward": result["mean_hidden_reward"]})
    table = render_noise_table(rows, noise_levels, seeds)
    (out / "table.md").write_text(table)
    summary = {"rows": rows, "noise_levels": list(noise_levels), "seeds": list(seeds), "methods": list(methods),
               "wall_seconds": time.time() - started}
    write_json(out / "metrics.json", summary)
    return summary


def render_noise_table(rows: Sequence[dict], noise_levels: Sequence[float], seeds: Sequence[int]) -> str:
    """Win rate against SFT (%) per method and noise level: mean over seeds ± a 95% t-interval across seeds."""
    from statistics import mean, stdev

    t95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
    labels = {r["method"]: r["label"] for r in rows if r["method"] != "sft"}
    lines = [
        f"# Noise sweep: win rate against SFT (%) by fraction of flipped labels ({len(seeds)} seeds)",
        "",
        "Mean over seeds ± half-width of a 95% t-interval across seeds; hidden-reward judge, both orders, ties ½.",
        "",
        "| method | " + " | ".join(f"{100 * n:.0f}% flipped" for n in noise_levels) + " |",
        "|---|" + "---|" * len(noise_levels),
    ]
    for method, label in labels.items():
        cells = []
        for noise in noise_levels:
            values = [100 * r["win_rate_vs_sft"] for r in rows if r["method"] == method and r["noise"] == noise]
            if not values:
                cells.append("–")
            elif len(values) == 1:
                cells.append(f"{values[0]:.1f}")
            else:
                half = t95.get(len(values) - 1, 1.96) * stdev(values) / len(values) ** 0.5
                cells.append(f"{mean(values):.1f} ± {half:.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
