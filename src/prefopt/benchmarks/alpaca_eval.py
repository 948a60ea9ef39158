"""AlpacaEval 2 through our own judge client (SPEC §7 "AlpacaEval 2"), or any judge with the same interface.

Outputs
    AlpacaEval's format: a JSON list of ``{"instruction", "output", "generator", "dataset"}``
    (:func:`load_outputs`, :func:`save_outputs`). The baseline is gpt4_1106_preview's outputs, which live on the Hub
    (unreachable here): the user passes a local copy (:func:`load_baseline_outputs` names the expected file).

Annotation (:func:`annotate`)
    The annotator is alpaca_eval's ``weighted_alpaca_eval_gpt4_turbo``. Its config (``configs.yaml``) and prompt
    template (``alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt``) are READ AT RUN TIME from the installed
    ``alpaca_eval`` package (never copied here); the template is filled with alpaca_eval's own ``make_prompts`` and
    turned into chat messages with its ``prompt_to_chatml``; the request uses the config's completion kwargs
    (``max_tokens=1``, ``temperature=1``, ``logprobs=True``, ``top_logprobs=5``) but OUR :class:`JudgeClient`'s model,
    endpoint, retries and on-disk cache (keyed with the template's sha256), so a rerun costs no call.

    alpaca_eval's convention: ``output_1`` = the baseline, ``output_2`` = the evaluated model, and the preference is
    in **[1, 2]**: 1 = baseline (output_1) better, 2 = model (output_2) better, 1.5 = indifferent.

    Order: per instruction, the two outputs are shown swapped or not, decided as alpaca_eval's
    ``RandomSwitchTwoColumnsProcessor`` does: ``random.Random("is_switched_outputs" + instruction + str(seed))
    .choices([False, True])`` (seed 123 by default, as in alpaca_eval). The decision is recorded per annotation
    (``is_switched_outputs``).

    Log-probs → preference (alpaca_eval's ``logprob_parser``, called with the config's kwargs
    ``numerator_token="m"``, ``denominator_tokens=["m", "M"]``, ``is_binarize=False``): the template labels the
    first shown output ``m`` and the second ``M``; from the first generated token's ``top_logprobs`` (5 of them) keep
    the entries whose token is exactly ``m`` or ``M`` (case-sensitive, no whitespace variants); a missing one counts
    as probability 0 (log-prob -inf); ``P(m) = exp(lp_m) / (exp(lp_m) + exp(lp_M))`` (renormalised over the two
    tokens only); the shown-order preference is ``2 - P(m)``. If neither token is among the top log-probs (or the
    answer has no log-probs), the preference is NaN and the instruction is dropped from the metrics, as in
    alpaca_eval. The order is undone as alpaca_eval does: when the outputs were switched, ``preference = 3 - shown``.

Metrics (:func:`compute_metrics`)
    * ``win_rate`` = mean of (preference - 1) × 100 and ``standard_error`` = its standard error (ddof 1) × 100:
      alpaca_eval's ``AbsoluteScoringRule.describe_head2head`` (a legacy 0 counts as 1.5; NaN dropped).
    * ``lc_win_rate``: alpaca_eval's own ``get_length_controlled_winrate`` (``length_controlled_v1``), run only when
      it can: every call of it (any ``glm_name``) downloads ``df_gamed.csv`` from the Hub dataset
      ``tatsu-lab/alpaca_eval`` (instruction difficulties + annotations of the two "gamed" verbose/concise baselines
      used for the regularisation), and its ``index`` feature must be the position in the 805-instruction eval set.
      Offline, that file is absent from the Hugging Face cache, so ``lc_win_rate`` is null and
      ``lc_win_rate_note`` says why. (``predict_winrate`` / the ``baseline=`` option also need
      ``instruction_difficulty.csv`` from the same Hub dataset.)
    * ``lc_win_rate_ours``: OUR length-controlled fit, always computed, labelled as ours (see :func:`lc_fit_ours`).

Our LC fit vs. the official one
    Same: the target is the probability (preference - 1) fitted with the log-loss of a soft label; the length feature
    is ``tanh(d / std(d))`` with ``d = len(output_1) - len(output_2)`` in characters (std with ddof 1); the design has
    no intercept but a constant ``not_gamed_baseline`` column (= 1 for every real annotation) — this column IS the
    model's own intercept (in the official fit the gamed baselines have 0 there), so "no intercept" in SPEC §7 means
    no intercept besides it; an ``instruction_difficulty`` term only when the per-instruction difficulties are given;
    LC WR = mean predicted probability with the length feature set to 0, × 100.
    Different: ours is an unpenalised maximum-likelihood fit (Newton, float64); the official one is L1-penalised
    (liblinear) with C picked by 5-fold GroupKFold cross-validation over 10 values in [1e-4, 1e4], and regularised
    towards the gamed baselines (their rows added with total weight 0.2), both of which need ``df_gamed.csv``.
    Without difficulties, our LC WR is simply sigmoid(fitted constant).

Judges (:class:`AlpacaJudge`)
    :func:`annotate` asks any object with ``prefer(instruction, output_1, output_2) -> preference``: at paper scale
    :class:`LLMAlpacaJudge` (the annotator above through a :class:`JudgeClient`), in the small world (SPEC §8)
    :class:`prefopt.smallworld.benchmarks.HiddenRewardAlpacaJudge` (the hidden reward through a logistic link). Both
    go through the same order switching, metrics (raw WR and our LC fit) and result format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

logger = logging.getLogger(__name__)

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
BASELINE_GENERATOR = "gpt4_1106_preview"
DEFAULT_SEED = 123  # alpaca_eval's processors' default seed
SWITCH_COLUMN = "is_switched_outputs"  # alpaca_eval's _switch_column (its seed string starts with it)
OUTPUT_KEYS = ("instruction", "output", "generator", "dataset")
HUB_DATASET = "tatsu-lab/alpaca_eval"
BASELINE_FILE_HINT = (
    "the gpt4_1106_preview baseline outputs of AlpacaEval 2: a JSON list of {instruction, output, generator, dataset} "
    "for the 805 instructions, i.e. alpaca_eval's results/gpt4_1106_preview/model_outputs.json (GitHub repo "
    "tatsu-lab/alpaca_eval) or alpaca_eval_gpt4_baseline.json from the Hub dataset tatsu-lab/alpaca_eval"
)


# ---------------------------------------------------------------------------------------------------------------
# Outputs files
# ---------------------------------------------------------------------------------------------------------------


def make_outputs(instructions: Sequence[str], outputs: Sequence[str], generator: str,
                 dataset: str = "helpful_base") -> list[dict]:
    if len(instructions) != len(outputs):
        raise ValueError(f"{len(instructions)} instructions but {len(outputs)} outputs")
    return [{"instruction": i, "output": o, "generator": generator, "dataset": dataset}
            for i, o in zip(instructions, outputs)]


def _validate_outputs(rows: Any, where: str) -> list[dict]:
    if not isinstance(rows, list):
        raise ValueError(f"{where}: AlpacaEval outputs are a JSON list of objects, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not isinstance(
                row.get("output"), str):
            raise ValueError(f"{where}: item {i} lacks a string 'instruction' and 'output'")
    return rows


def load_outputs(path: str | os.PathLike) -> list[dict]:
    """An AlpacaEval outputs file: ``[{"instruction", "output", "generator", "dataset"}, ...]``."""
    path = Path(path)
    return _validate_outputs(json.loads(path.read_text(encoding="utf-8")), str(path))


def save_outputs(outputs: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    path = Path(path)
    rows = _validate_outputs([dict(r) for r in outputs], str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def load_baseline_outputs(path: str | os.PathLike | None) -> list[dict]:
    """The gpt4_1106_preview baseline from a local file (the Hub is unreachable): a clear error when it is absent."""
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"AlpacaEval baseline outputs not found{'' if path is None else f' at {path}'}: pass the path of "
            f"{BASELINE_FILE_HINT}. The Hub cannot be reached from here, so prefopt does not download it."
        )
    return load_outputs(path)


# ---------------------------------------------------------------------------------------------------------------
# The annotator, read from the installed alpaca_eval package
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlpacaAnnotator:
    """alpaca_eval's annotator config and prompt template, read from the installed package at run time."""

    name: str
    template_name: str  # relative to alpaca_eval/evaluators_configs
    template: str
    template_sha256: str
    completions_kwargs: dict
    parser_kwargs: dict
    alpaca_eval_version: str

    @classmethod
    def load(cls, name: str = ANNOTATOR) -> "AlpacaAnnotator":
        import yaml
        from alpaca_eval import constants

        config_path = Path(constants.EVALUATORS_CONFIG_DIR) / name / "configs.yaml"
        if not config_path.is_file():
            raise FileNotFoundError(f"alpaca_eval has no evaluator config {name!r} ({config_path})")
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))[name]
        if config.get("fn_completion_parser") != "logprob_parser":
            raise ValueError(f"{name} does not read the preference from log-probs; only such annotators are supported")
        template_name = config["prompt_template"]
        text = (Path(constants.EVALUATORS_CONFIG_DIR) / template_name).read_text(encoding="utf-8")
        return cls(
            name=name,
            template_name=template_name,
            template=text,
            template_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            completions_kwargs=dict(config.get("completions_kwargs", {})),
            parser_kwargs=dict(config.get("completion_parser_kwargs", {})),
            alpaca_eval_version=metadata.version("alpaca_eval"),
        )

    @property
    def template_id(self) -> tuple[str, str]:
        return f"alpaca_eval/{self.template_name}", self.template_sha256

    def messages(self, instruction: str, output_1: str, output_2: str) -> list[dict]:
        """The chat messages for one comparison, built by alpaca_eval's own make_prompts + prompt_to_chatml."""
        import pandas as pd
        from alpaca_eval import utils

        df = pd.DataFrame([{"instruction": instruction, "output_1": output_1, "output_2": output_2}])
        prompts, _ = utils.make_prompts(df, template=self.template)
        return utils.prompt_to_chatml(prompts[0])

    def request(self, instruction: str, output_1: str, output_2: str) -> dict:
        """The keyword arguments of :meth:`JudgeClient.complete` (the config's kwargs, our client's model)."""
        kw = self.completions_kwargs
        return {
            "messages": self.messages(instruction, output_1, output_2),
            "temperature": float(kw.get("temperature", 1.0)),
            "max_tokens": int(kw.get("max_tokens", 1)),
            "logprobs": bool(kw.get("logprobs", True)),
            "top_logprobs": kw.get("top_logprobs", 5),
            "template_id": self.template_id,
        }

    def preference(self, logprobs: Mapping[str, Any] | None) -> float:
        """The shown-order preference in [1, 2] (NaN when unreadable) from a chat completion's ``logprobs`` object,
        by alpaca_eval's ``logprob_parser`` with this config's kwargs."""
        return preference_from_logprobs(logprobs, **self.parser_kwargs)


def preference_from_logprobs(logprobs: Mapping[str, Any] | None, *, numerator_token: str = "m",
                             denominator_tokens: Sequence[str] = ("m", "M"), is_binarize: bool = False,
                             **kwargs: Any) -> float:
    """alpaca_eval's ``logprob_parser`` on the first token's ``top_logprobs``: ``2 - P(m) / (P(m) + P(M))``.

    ``logprobs`` is the OpenAI choice's ``logprobs`` object (``{"content": [{"token", "logprob", "top_logprobs":
    [{"token", "logprob"}, ...]}]}``). NaN when it is missing or neither token is present."""
    from alpaca_eval.completion_parsers import logprob_parser

    if not logprobs or not logprobs.get("content") or "top_logprobs" not in logprobs["content"][0]:
        return float("nan")
    first_only = {"logprobs": {"content": [logprobs["content"][0]]}}
    value = logprob_parser(first_only, numerator_token=numerator_token, denominator_tokens=list(denominator_tokens),
                           is_binarize=is_binarize, **kwargs)[0]
    return float(value)


def is_switched(instruction: str, seed: int = DEFAULT_SEED) -> bool:
    """Whether the outputs are shown swapped for this instruction: alpaca_eval's RandomSwitchTwoColumnsProcessor."""
    return bool(random.Random(SWITCH_COLUMN + instruction + str(seed)).choices([False, True], k=1)[0])


def _pair_with_baseline(model_outputs: Sequence[Mapping], baseline_outputs: Sequence[Mapping]) -> list[tuple]:
    by_instruction = {r["instruction"]: (i, r) for i, r in enumerate(baseline_outputs)}
    pairs = []
    for row in model_outputs:
        if row["instruction"] not in by_instruction:
            raise ValueError(f"instruction without a baseline output: {row['instruction'][:80]!r}")
        index, base = by_instruction[row["instruction"]]
        pairs.append((index, base, row))
    return pairs


class AlpacaJudge(Protocol):
    """What :func:`annotate` asks of a judge: a preference between two outputs shown in a given order.

    ``prefer(instruction, output_1, output_2)`` returns ``{"preference": in [1, 2], 2 = output_2 better, NaN when
    unreadable; "key": a cache key or None; "cached": bool}``. ``name`` is the annotator's name, ``model`` the judge
    model recorded per annotation; ``concurrent`` (optional, default False): comparisons may run in a thread pool.
    Satisfied by :class:`LLMAlpacaJudge` (paper scale) and the small world's
    :class:`prefopt.smallworld.benchmarks.HiddenRewardAlpacaJudge`."""

    name: str
    model: str

    def prefer(self, instruction: str, output_1: str, output_2: str) -> Mapping[str, Any]:
        ...


class LLMAlpacaJudge:
    """alpaca_eval's annotator (:class:`AlpacaAnnotator`) asked through our :class:`prefopt.judges.JudgeClient`
    (cached, so a rerun pays nothing); the preference is read from the first token's log-probs."""

    concurrent = True

    def __init__(self, client, annotator: AlpacaAnnotator | None = None):
        self.client = client
        self.annotator = annotator or AlpacaAnnotator.load()
        self.name, self.model = self.annotator.name, client.model

    def prefer(self, instruction: str, output_1: str, output_2: str) -> Mapping[str, Any]:
        result = self.client.complete(**self.annotator.request(instruction, output_1, output_2))
        return {"preference": self.annotator.preference(result.get("logprobs")), "key": result.get("key"),
                "cached": bool(result.get("cached"))}


def annotate(
    model_outputs: Sequence[Mapping[str, Any]],
    baseline_outputs: Sequence[Mapping[str, Any]],
    judge,
    *,
    annotator: AlpacaAnnotator | None = None,
    seed: int = DEFAULT_SEED,
    workers: int = 8,
    progress: bool = False,
) -> list[dict]:
    """Judge every model output against the baseline output of the same instruction, each pair shown in the order
    alpaca_eval's processor picks (:func:`is_switched`), the order undone afterwards.

    ``judge``: an :class:`AlpacaJudge`, or a :class:`prefopt.judges.JudgeClient`, wrapped in :class:`LLMAlpacaJudge`
    with ``annotator``. Returns alpaca_eval-style annotations: ``instruction``, ``output_1`` (baseline), ``output_2``
    (model), ``generator_1``, ``generator_2``, ``annotator``, ``index`` (position in the baseline file, i.e. in the
    eval set), ``is_switched_outputs``, ``shown_preference`` (as read, shown order), ``preference`` (in [1, 2], 2 =
    model better, order undone), ``judge_model``, ``cache_key``, ``cached``."""
    from prefopt.judges import _run_pool

    if not hasattr(judge, "prefer"):
        judge = LLMAlpacaJudge(judge, annotator)
    pairs = _pair_with_baseline(model_outputs, baseline_outputs)
    shown, switched = [], []
    for _, base, row in pairs:
        s = is_switched(row["instruction"], seed)
        first, second = (row["output"], base["output"]) if s else (base["output"], row["output"])
        shown.append((row["instruction"], first, second))
        switched.append(s)
    results = _run_pool([lambda c=c: judge.prefer(*c) for c in shown],
                        workers=workers if getattr(judge, "concurrent", False) else 1, progress=progress,
                        desc="alpaca_eval")
    annotations = []
    for (index, base, row), s, result in zip(pairs, switched, results):
        preference = result["preference"]
        annotations.append({
            "instruction": row["instruction"],
            "output_1": base["output"],
            "output_2": row["output"],
            "generator_1": base.get("generator", BASELINE_GENERATOR),
            "generator_2": row.get("generator", "model"),
            "annotator": judge.name,
            "index": index,
            SWITCH_COLUMN: s,
            "shown_preference": preference,
            "preference": 3.0 - preference if s else preference,
            "judge_model": judge.model,
            "cache_key": result.get("key"),
            "cached": bool(result.get("cached")),
        })
    n_nan = sum(math.isnan(a["preference"]) for a in annotations)
    if n_nan:
        logger.warning("%d of %d annotations have no m/M token among the top log-probs (dropped from metrics)",
                       n_nan, len(annotations))
    return annotations


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------


def _preferences(annotations: Sequence[Mapping]) -> np.ndarray:
    p = np.array([float(a["preference"]) for a in annotations], dtype=np.float64)
    return np.where(p == 0.0, 1.5, p)  # alpaca_eval's legacy draw encoding


def raw_win_rate(annotations: Sequence[Mapping]) -> dict:
    """alpaca_eval's weighted win rate: mean(preference - 1) × 100 and its standard error (ddof 1) × 100."""
    p = _preferences(annotations)
    keep = (p >= 1) & (p <= 2)  # drops NaN and invalid values, as describe_head2head does
    y = p[keep] - 1.0
    n = int(y.size)
    return {
        "win_rate": float(y.mean() * 100) if n else float("nan"),
        "standard_error": float(y.std(ddof=1) / math.sqrt(n) * 100) if n > 1 else float("nan"),
        "n": n,
        "n_dropped": int((~keep).sum()),
    }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def lc_features(annotations: Sequence[Mapping], instruction_difficulty: Mapping[int, float] | None = None):
    """(X, y, names): the design of our LC fit on the annotations with a readable preference."""
    p = _preferences(annotations)
    keep = (p >= 1) & (p <= 2)
    rows = [a for a, k in zip(annotations, keep) if k]
    y = p[keep] - 1.0
    d = np.array([len(a["output_1"]) - len(a["output_2"]) for a in rows], dtype=np.float64)
    sd = d.std(ddof=1) if d.size > 1 else 0.0
    std_delta = d / sd if sd > 0 else np.zeros_like(d)
    columns, names = [np.tanh(std_delta)], ["np.tanh(std_delta_len)"]
    if instruction_difficulty is not None:
        columns.append(np.array([float(instruction_difficulty[a["index"]]) for a in rows]))
        names.append("instruction_difficulty")
    columns.append(np.ones_like(d))
    names.append("not_gamed_baseline.astype(float)")
    return np.column_stack(columns), y, names


def fit_soft_logistic(X: np.ndarray, y: np.ndarray, *, l2: float = 1e-8, max_iter: int = 100,
                      tol: float = 1e-12) -> np.ndarray:
    """Maximum likelihood of a no-intercept logistic model with soft labels y in [0, 1] (Newton, float64); a tiny
    ridge ``l2`` only keeps the Hessian invertible when a column is degenerate."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.zeros(X.shape[1])
    for _ in range(max_iter):
        mu = _sigmoid(X @ w)
        grad = X.T @ (y - mu) - l2 * w
        hess = (X * (mu * (1 - mu))[:, None]).T @ X + l2 * np.eye(X.shape[1])
        step = np.linalg.solve(hess, grad)
        # damped Newton: halve the step while the (penalised) log-likelihood does not improve
        def ll(v):
            eta = X @ v
            return float(np.sum(y * -np.logaddexp(0, -eta) + (1 - y) * -np.logaddexp(0, eta)) - 0.5 * l2 * v @ v)
        base, t = ll(w), 1.0
        while ll(w + t * step) < base - 1e-12 and t > 1e-8:
            t /= 2
        w = w + t * step
        if np.max(np.abs(t * step)) < tol:
            break
    return w


def lc_fit_ours(annotations: Sequence[Mapping], instruction_difficulty: Mapping[int, float] | None = None) -> dict:
    """OUR length-controlled win rate (see the module docstring for the differences from the official one)."""
    X, y, names = lc_features(annotations, instruction_difficulty)
    if y.size < 2:
        return {"lc_win_rate_ours": float("nan"), "weights": {}, "n": int(y.size)}
    w = fit_soft_logistic(X, y)
    X0 = X.copy()
    X0[:, 0] = 0.0  # the length term set to 0
    pred = _sigmoid(X0 @ w)
    return {
        "lc_win_rate_ours": float(pred.mean() * 100),
        "lc_standard_error_ours": float(pred.std(ddof=1) / math.sqrt(pred.size) * 100),
        "weights": dict(zip(names, map(float, w))),
        "n": int(y.size),
    }


def _cached_hub_file(filename: str) -> str | None:
    """The local path of a file of the Hub dataset tatsu-lab/alpaca_eval if the HF cache holds it (no network)."""
    try:
        from alpaca_eval import constants
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(HUB_DATASET, filename, repo_type="dataset", cache_dir=constants.DEFAULT_CACHE_DIR)
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return None
    return found if isinstance(found, str) else None


LC_RULE = ("alpaca_eval get_length_controlled_winrate (length_controlled_v1) on the annotations with a readable "
           "preference (NaN rows dropped first, as alpaca_eval 0.6.6)")


def official_lc_win_rate(annotations: Sequence[Mapping], *, allow: str = "auto") -> tuple[float | None, str]:
    """alpaca_eval's ``get_length_controlled_winrate`` (length_controlled_v1) when it can run, else (None, reason).

    ``allow``: ``"auto"`` runs it only when ``df_gamed.csv`` is in the local HF cache; ``"never"``; ``"always"``
    lets it try to download (hangs and fails without network)."""
    if allow == "never":
        return None, "official LC not requested"
    if allow == "auto" and _cached_hub_file("df_gamed.csv") is None:
        return None, (
            "alpaca_eval's get_length_controlled_winrate cannot run offline: for every glm_name it downloads "
            f"df_gamed.csv from the Hub dataset {HUB_DATASET} (instruction_difficulty per eval-set index and the "
            "annotations of the verbose/concise 'gamed' baselines it regularises towards, weight 0.2); that file is "
            "not in the local Hugging Face cache and the Hub is unreachable, so lc_win_rate is null."
        )
    import pandas as pd
    from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

    # alpaca_eval 0.6.6 annotators/base.py _postprocess_and_store_ drops annotations whose preference is NaN before
    # main.evaluate hands them to the metric; so do we (std_delta_len and the mean prediction are over the rest).
    readable = [a for a in annotations if a.get("preference") is not None and not math.isnan(float(a["preference"]))]
    df = pd.DataFrame([{k: a[k] for k in ("preference", "output_1", "output_2", "index", "generator_1",
                                           "generator_2", "annotator")} for a in readable])
    try:
        metrics = get_length_controlled_winrate(df, save_weights_dir=None, is_add_glm_preference_inplace=False)
    except Exception as exc:  # noqa: BLE001 - report why, keep ours
        return None, f"alpaca_eval's get_length_controlled_winrate failed: {type(exc).__name__}: {exc}"[:500]
    return float(metrics["length_controlled_winrate"]), "alpaca_eval get_length_controlled_winrate (length_controlled_v1)"


def load_instruction_difficulty(path: str | os.PathLike) -> dict[int, float]:
    """Per-index instruction difficulty from alpaca_eval's ``instruction_difficulty.csv`` (index, value) or its
    ``df_gamed.csv`` (columns ``index``, ``instruction_difficulty``)."""
    import pandas as pd

    df = pd.read_csv(path)
    if "instruction_difficulty" in df.columns and "index" in df.columns:
        df = df.drop_duplicates("index")
        return dict(zip(df["index"].astype(int), df["instruction_difficulty"].astype(float)))
    return dict(zip(df.iloc[:, 0].astype(int), df.iloc[:, 1].astype(float)))


def compute_metrics(
    annotations: Sequence[Mapping[str, Any]],
    *,
    judge: str | None = None,
    template_sha256: str | None = None,
    instruction_difficulty: Mapping[int, float] | str | os.PathLike | None = None,
    official_lc: str = "auto",
    our_lc: bool = True,
) -> dict:
    """The result JSON: raw WR ± SE, official LC WR (or null + reason), our LC WR (labelled; only with ``our_lc``,
    which the paper-scale runner turns off: on 59 leaderboard models it was off from alpaca_eval's LC by a median
    4.7 and up to 28 points), n, avg_length, judge, template sha, alpaca_eval version, ``lc_rule``. ``avg_length`` is the model outputs' mean length in characters, as on
    alpaca_eval's leaderboard."""
    if instruction_difficulty is not None and not isinstance(instruction_difficulty, Mapping):
        instruction_difficulty = load_instruction_difficulty(instruction_difficulty)
    raw = raw_win_rate(annotations)
    lc_official, lc_note = official_lc_win_rate(annotations, allow=official_lc)
    ours = lc_fit_ours(annotations, instruction_difficulty) if our_lc else None
    try:
        version = metadata.version("alpaca_eval")
    except metadata.PackageNotFoundError:
        version = None
    judges = {a.get("judge_model") for a in annotations} - {None}
    metrics = {
        "win_rate": raw["win_rate"],
        "standard_error": raw["standard_error"],
        "lc_win_rate": lc_official,
        "lc_win_rate_note": lc_note,
        "lc_rule": LC_RULE,
        "n": raw["n"],
        "n_dropped": raw["n_dropped"],
        "avg_length": float(np.mean([len(a["output_2"]) for a in annotations])) if annotations else float("nan"),
        "judge": judge if judge is not None else (judges.pop() if len(judges) == 1 else sorted(judges) or None),
        "annotator": ANNOTATOR,
        "template_sha256": template_sha256,
        "alpaca_eval_version": version,
    }
    if ours is not None:
        metrics.update({
            "lc_win_rate_ours": ours["lc_win_rate_ours"],
            "lc_win_rate_ours_note": (
                "prefopt's own LC fit, not alpaca_eval's (on 59 leaderboard models it was off from alpaca_eval's LC "
                "by a median 4.7 and up to 28 points): unpenalised logistic GLM (soft labels) of preference-1 on "
                "tanh(standardised length difference in characters) + a constant not-gamed-baseline term"
                + (" + instruction difficulty" if instruction_difficulty is not None
                   else " (no instruction difficulty: not available)")
                + ", no other intercept, no L1/cross-validation, no regularisation towards gamed baselines; LC WR = "
                  "mean prediction with the length term at 0, x100"
            ),
            "lc_weights_ours": ours["weights"],
        })
    return metrics


def evaluate(model_outputs, baseline_outputs_path, client, *, seed: int = DEFAULT_SEED, workers: int = 8,
             instruction_difficulty=None, official_lc: str = "auto") -> tuple[dict, list[dict]]:
    """Load the baseline, annotate through ``client``, compute the metrics: (result JSON, annotations)."""
    if isinstance(model_outputs, (str, os.PathLike)):
        model_outputs = load_outputs(model_outputs)
    baseline = load_baseline_outputs(baseline_outputs_path)
    annotator = AlpacaAnnotator.load()
    annotations = annotate(model_outputs, baseline, client, annotator=annotator, seed=seed, workers=workers)
    result = compute_metrics(annotations, judge=client.model, template_sha256=annotator.template_sha256,
                             instruction_difficulty=instruction_difficulty, official_lc=official_lc)
    return result, annotations
