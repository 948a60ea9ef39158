"""AlpacaEval 2 through our judge client (prefopt.benchmarks.alpaca_eval): preference extraction, order handling,
caching, raw WR, our LC fit against alpaca_eval's own get_length_controlled_winrate, and the small-world variant."""

from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pytest

pytest.importorskip("alpaca_eval")

from prefopt.benchmarks import alpaca_eval as ae  # noqa: E402
from tests.fake_openai import FakeOpenAI, Reply  # noqa: E402


def _lp(**tokens):
    return {"content": [{"token": "x", "logprob": -0.1,
                         "top_logprobs": [{"token": t, "logprob": v} for t, v in tokens.items()]}]}


def test_preference_from_logprobs_hand_made():
    ann = ae.AlpacaAnnotator.load()
    assert ann.parser_kwargs["numerator_token"] == "m" and ann.completions_kwargs["top_logprobs"] == 5
    # P(m)=0.8, P(M)=0.2 -> first shown output better -> 2 - 0.8
    assert ann.preference(_lp(m=math.log(0.8), M=math.log(0.2))) == pytest.approx(1.2)
    # renormalised over m and M only; other tokens ignored
    assert ann.preference(_lp(M=math.log(0.3), m=math.log(0.1), The=-0.5)) == pytest.approx(2 - 0.25)
    assert ann.preference(_lp(M=-0.01, Both=-5)) == pytest.approx(2.0)  # m missing -> P(m)=0
    assert ann.preference(_lp(m=-3.0)) == pytest.approx(1.0)  # M missing
    assert math.isnan(ann.preference(_lp(A=-0.1, B=-2)))  # neither token
    assert math.isnan(ann.preference(None))
    assert math.isnan(ann.preference(_lp(**{" m": -0.1, "mm": -1})))  # exact tokens only


def test_template_read_from_package_and_order():
    ann = ae.AlpacaAnnotator.load()
    from alpaca_eval import constants

    path = constants.EVALUATORS_CONFIG_DIR / "alpaca_eval_clf_gpt4_turbo" / "alpaca_eval_clf.txt"
    assert ann.template == path.read_text() and len(ann.template_sha256) == 64
    msgs = ann.messages("Say hi {x}", "FIRST", "SECOND")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert user.index('"model_identifier": "m"') < user.index("FIRST") < user.index('"model_identifier": "M"') \
        < user.index("SECOND")
    # alpaca_eval's own switching rule, seeded by the instruction
    import random as _r

    for ins in ("a", "b", "c", "what is 2+2"):
        assert ae.is_switched(ins) == _r.Random("is_switched_outputs" + ins + "123").choices([False, True])[0]
    flags = [ae.is_switched(f"instruction {i}") for i in range(200)]
    assert 60 < sum(flags) < 140


def _extract(content):
    m = re.search(r'"model_identifier": "m",\s*"output": """(.*?)"""\s*\},\s*\{\s*"model_identifier": "M",'
                  r'\s*"output": """(.*?)"""', content, re.S)
    return m.group(1), m.group(2)


def test_annotate_end_to_end_fake_openai(tmp_path):
    from prefopt.judges import JudgeClient

    fake = FakeOpenAI()

    def rule(content, n):  # a judge that prefers the longer output with p = 0.9
        first, second = _extract(content)
        p_m = 0.9 if len(first) > len(second) else 0.1
        return Reply(content="m" if p_m > 0.5 else "M",
                     logprobs=_lp(m=math.log(p_m), M=math.log(1 - p_m), Both=-9.0))

    fake.rule = rule
    try:
        instructions = [f"Question number {i}?" for i in range(12)]
        base = ae.make_outputs(instructions, ["short"] * 12, "gpt4_1106_preview")
        model = ae.make_outputs(instructions, ["a much longer answer"] * 12, "mine")
        base_path = ae.save_outputs(base, tmp_path / "baseline.json")
        model_path = ae.save_outputs(model, tmp_path / "model.json")
        assert ae.load_outputs(model_path) == model
        with pytest.raises(FileNotFoundError, match="gpt4_1106_preview"):
            ae.load_baseline_outputs(tmp_path / "missing.json")
        client = JudgeClient("judge-x", base_url=fake.url, api_key="k", cache_dir=tmp_path / "cache", max_retries=0)
        result, anns = ae.evaluate(model_path, base_path, client, workers=4)
        assert fake.count() == 12
        body = fake.requests[0]["body"]
        assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 5
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        switched = [a["is_switched_outputs"] for a in anns]
        assert any(switched) and not all(switched)
        for a in anns:  # order undone: the model (longer) always gets preference 1.9
            assert a["preference"] == pytest.approx(1.9)
            assert a["shown_preference"] == pytest.approx(1.1 if a["is_switched_outputs"] else 1.9)
        assert result["win_rate"] == pytest.approx(90.0) and result["n"] == 12
        assert result["lc_win_rate"] is None and "df_gamed.csv" in result["lc_win_rate_note"]
        assert result["judge"] == "judge-x" and result["template_sha256"] == ae.AlpacaAnnotator.load().template_sha256
        assert result["alpaca_eval_version"] == "0.6.6" and result["avg_length"] == len("a much longer answer")
        json.dumps(result)
        # rerun: all from the cache, zero calls
        result2, anns2 = ae.evaluate(model_path, base_path, client, workers=4)
        assert fake.count() == 12 and all(a["cached"] for a in anns2)
        assert result2["win_rate"] == result["win_rate"]
        client.close()
    finally:
        fake.close()


def _synthetic_annotations(n=300, seed=0, length_effect=1.5, quality=0.4):
    rng = np.random.default_rng(seed)
    anns = []
    for i in range(n):
        l1, l2 = int(rng.integers(50, 2000)), int(rng.integers(50, 2000))
        d = (l2 - l1) / 600
        p = 1 / (1 + math.exp(-(quality + length_effect * math.tanh(d) + rng.normal(0, 0.5))))
        anns.append({"instruction": f"i{i}", "output_1": "x" * l1, "output_2": "y" * l2, "index": i,
                     "generator_1": "base", "generator_2": "model", "annotator": "a", "preference": 1 + p})
    return anns


def test_raw_win_rate_is_mean_preference_and_matches_alpaca_eval():
    from alpaca_eval.metrics.winrate import get_winrate

    anns = _synthetic_annotations()
    anns[3]["preference"] = float("nan")
    out = ae.raw_win_rate(anns)
    prefs = np.array([a["preference"] for a in anns if not math.isnan(a["preference"])])
    assert out["win_rate"] == pytest.approx((prefs - 1).mean() * 100) and out["n"] == len(anns) - 1
    ref = get_winrate(anns)
    assert out["win_rate"] == pytest.approx(ref["win_rate"]) and out["standard_error"] == pytest.approx(
        ref["standard_error"])


@pytest.mark.parametrize("with_difficulty", [False, True])
def test_our_lc_equals_alpaca_eval_glm_on_synthetic_side_data(tmp_path, monkeypatch, with_difficulty):
    """alpaca_eval's get_length_controlled_winrate runs offline only if its Hub download of df_gamed.csv is served
    locally: we serve a synthetic df_gamed.csv (difficulties only) and use the GLMs without the gamed-baseline
    regularisation (length_controlled_minimal / _noreg), the settings where both fits model the same thing. Theirs is
    L1 + CV-chosen C (large C wins here), ours unpenalised: equal to ~0.2 points."""
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate

    anns = _synthetic_annotations(n=400, seed=1)
    rng = np.random.default_rng(5)
    difficulty = {i: float(rng.normal()) for i in range(400)}
    for a in anns:  # make difficulty matter
        p = a["preference"] - 1
        logit = math.log(p / (1 - p)) - 0.8 * difficulty[a["index"]]
        a["preference"] = 1 + 1 / (1 + math.exp(-logit))
    csv = tmp_path / "df_gamed.csv"
    pd.DataFrame({"index": list(difficulty), "instruction_difficulty": list(difficulty.values()),
                  "model": "gamed", "preference": 1.5, "not_gamed_baseline": False}).to_csv(csv, index=False)
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda **kw: str(csv))
    glm = "length_controlled_noreg" if with_difficulty else "length_controlled_minimal"
    official = glm_winrate.get_length_controlled_winrate(pd.DataFrame(anns), glm_name=glm, save_weights_dir=None,
                                                         is_add_glm_preference_inplace=False)
    ours = ae.lc_fit_ours(anns, ae.load_instruction_difficulty(csv) if with_difficulty else None)
    assert ours["lc_win_rate_ours"] == pytest.approx(official["length_controlled_winrate"], abs=0.2)
    raw = ae.raw_win_rate(anns)["win_rate"]
    assert abs(raw - ours["lc_win_rate_ours"]) > 1  # the length term does something here


def test_our_fit_is_the_mle_float64_scipy():
    from scipy.optimize import minimize

    anns = _synthetic_annotations(n=200, seed=3)
    X, y, _ = ae.lc_features(anns)

    def nll(w):
        eta = X @ w
        return float(np.sum(y * np.logaddexp(0, -eta) + (1 - y) * np.logaddexp(0, eta)))

    ref = minimize(nll, np.zeros(X.shape[1]), method="BFGS", options={"gtol": 1e-10}).x
    w = ae.fit_soft_logistic(X, y)
    np.testing.assert_allclose(w, ref, atol=1e-5)
    lc = ae.lc_fit_ours(anns)["lc_win_rate_ours"]
    assert lc == pytest.approx(100 / (1 + math.exp(-ref[-1])), abs=1e-4)  # no difficulty: sigmoid(constant)


def test_official_lc_offline_status():
    value, note = ae.official_lc_win_rate(_synthetic_annotations(n=20))
    assert value is None and "df_gamed.csv" in note and "tatsu-lab/alpaca_eval" in note


def test_smallworld_length_bias_raises_raw_not_lc():
    from prefopt.smallworld.benchmarks import HiddenRewardAlpacaJudge
    from prefopt.smallworld.world import SmallWorld, WorldConfig

    world = SmallWorld(WorldConfig(length_weight=0.0))
    prompts = [p["prompt"][0]["content"] for p in world.prompts(400, seed=0)]
    rng = random.Random(0)
    base = ae.make_outputs(prompts, [world.base_response(p, rng) for p in prompts], "base")
    raw, lc = {}, {}
    for k in (1, 2, 3):  # the same quality, k times longer (the answer repeated)
        r = random.Random(1)
        outs = []
        for p in prompts:
            words = world.base_response(p, r)[:-2].split()
            outs.append(" ".join(words * (k if r.random() < 0.5 else 1)) + " .")
        model = ae.make_outputs(prompts, outs, f"x{k}")
        anns = ae.annotate(model, base, HiddenRewardAlpacaJudge(world, length_bias=0.06))
        assert all(1 <= a["preference"] <= 2 for a in anns)
        m = ae.compute_metrics(anns, official_lc="never")
        raw[k], lc[k] = m["win_rate"], m["lc_win_rate_ours"]
    assert raw[3] - raw[1] > 10
    assert abs(lc[3] - lc[1]) < 0.3 * (raw[3] - raw[1])
    # without the bias, nothing moves much
    anns0 = ae.annotate(model, base, HiddenRewardAlpacaJudge(world, length_bias=0.0))
    assert ae.raw_win_rate(anns0)["win_rate"] < raw[3] - 10


def test_official_lc_drops_unreadable_rows_first(tmp_path, monkeypatch):
    """alpaca_eval 0.6.6 drops annotations with a NaN preference before its LC metric sees them
    (annotators/base.py); passing them in changes the length standardisation and the mean prediction."""
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate

    anns = _synthetic_annotations(n=120, seed=3)
    for a in anns[::7]:
        a["preference"] = float("nan")
    rng = np.random.default_rng(2)
    csv = tmp_path / "df_gamed.csv"
    pd.DataFrame({"index": range(120), "instruction_difficulty": rng.normal(size=120), "model": "gamed",
                  "preference": 1.5, "not_gamed_baseline": False}).to_csv(csv, index=False)
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda **kw: str(csv))
    columns = ("preference", "output_1", "output_2", "index", "generator_1", "generator_2", "annotator")
    frame = pd.DataFrame([{k: a[k] for k in columns} for a in anns])

    original = glm_winrate.get_length_controlled_winrate

    def theirs(df):
        return original(df, glm_name="length_controlled_minimal",
                                                         save_weights_dir=None,
                                                         is_add_glm_preference_inplace=False)["length_controlled_winrate"]

    monkeypatch.setattr(glm_winrate, "get_length_controlled_winrate",
                        lambda df, **kw: {"length_controlled_winrate": theirs(df)})
    value, note = ae.official_lc_win_rate(anns, allow="always")
    assert value == pytest.approx(theirs(frame[frame["preference"].notna()]), abs=1e-9)
    assert abs(value - theirs(frame)) > 1e-6  # the NaN rows would have changed it
    assert "length_controlled_v1" in note
    metrics = ae.compute_metrics(anns, official_lc="never", our_lc=False)
    assert "lc_win_rate_ours" not in metrics and "NaN rows dropped" in metrics["lc_rule"]
