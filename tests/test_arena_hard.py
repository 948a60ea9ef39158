"""Arena-Hard v0.1 (SPEC §7): verdict parsing, battle scoring, the Bradley–Terry win rate against independent float64
maximum-likelihood fits, the seeded bootstrap, the cached LLM judge against a local fake server, and the small-world
variant end to end."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from fake_openai import FakeOpenAI, Reply  # tests/ is on sys.path under pytest
from prefopt.benchmarks import arena_hard as ah
from prefopt.judges import JudgeClient
from prefopt.smallworld.benchmarks import HiddenRewardArenaJudge, arena_questions, gap_label
from prefopt.smallworld.world import SmallWorld

BASE = ah.DEFAULT_BASELINE


# -- verdict parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ah.LABELS)
def test_parse_each_label(label):
    assert ah.parse_verdict(f"My own answer: 42.\n\nBoth are fine.\nMy final verdict is: [[{label}]]") == label


def test_parse_last_label_wins_and_invalid_cases():
    assert ah.parse_verdict("I first thought [[A>B]] but on reflection [[B>>A]]") == "B>>A"
    assert ah.parse_verdict("Code: x[[0]] and y[[i+1]]. Verdict: [[A=B]]") == "A=B"  # non-verdict brackets ignored
    for bad in ["", None, "no verdict here", "A>B", "[A>B]", "[[A>>>B]]", "[[a>b]]", "[[B<A]]", "[[A > B]]",
                "[[A>B>]]", "[[B=A]]", "[[A>B]] then a lookalike [[A>>>B]]", "[[tie]]", "[[]]"]:
        assert ah.parse_verdict(bad) is None, bad


def test_game_outcomes_follow_positions():
    # game 1: baseline is A, model is B; game 2: model is A
    assert ah.game_outcome("B>>A", 1) == ("win", 3)
    assert ah.game_outcome("B>A", 1) == ("win", 1)
    assert ah.game_outcome("A>B", 1) == ("loss", 1)
    assert ah.game_outcome("A>>B", 2) == ("win", 3)
    assert ah.game_outcome("B>A", 2) == ("loss", 1)
    assert ah.game_outcome("A=B", 2) == ("tie", 1)
    assert ah.game_outcome(None, 1) is None
    with pytest.raises(ValueError):
        ah.game_outcome("A>B", 3)


# -- scoring -----------------------------------------------------------------------------------------------------


def rec(qid, game, verdict, model="m"):
    return {"question_id": qid, "model": model, "game": game, "verdict": verdict}


def test_strong_counts_three_ties_half_invalid_dropped():
    js = [rec("q1", 1, "B>>A"), rec("q1", 2, "A=B"),  # strong win (3) + tie (1 battle, ½)
          rec("q2", 1, "A>B"), rec("q2", 2, None)]  # loss (1) + invalid (dropped)
    out = ah.score_judgements(js, bootstrap=20)["models"]["m"]
    assert out["battles"] == 5
    assert out["win_share"] == pytest.approx(100 * 3.5 / 5)
    assert out["win_rate"] == pytest.approx(100 * 3.5 / 5, abs=1e-8)
    assert out["invalid"] == 1 and out["valid_games"] == 3 and out["games"] == 4 and out["questions"] == 2
    assert out["counts"] == {"A>>B": 0, "A>B": 1, "A=B": 1, "B>A": 0, "B>>A": 1, "invalid": 1}


def random_judgements(models, n_questions, seed, p_invalid=0.05):
    rng = random.Random(seed)
    js = []
    for i, m in enumerate(models):
        weights = [1 + i, 2, 2, 2 + i, 1 + 2 * i]  # models differ
        for q in range(n_questions):
            for game in (1, 2):
                v = None if rng.random() < p_invalid else rng.choices(ah.LABELS, weights=weights)[0]
                js.append(rec(f"q{q}", game, v, m))
    return js


def weighted_battles(js):
    """Independent expansion: (model, score for the model, weight) read directly off the labels."""
    out = []
    for j in js:
        v = j["verdict"]
        if v is None:
            continue
        if v == "A=B":
            out.append((j["model"], 0.5, 1.0))
            continue
        model_letter = "B" if j["game"] == 1 else "A"
        out.append((j["model"], 1.0 if v[0] == model_letter else 0.0, 3.0 if ">>" in v else 1.0))
    return out


def test_single_model_bt_equals_scipy_mle_and_win_share():
    js = random_judgements(["m"], 60, seed=1)
    battles = weighted_battles(js)
    s = np.array([b[1] for b in battles])
    w = np.array([b[2] for b in battles])

    def nll(x):
        return -(w * (s * log_expit(x[0]) + (1 - s) * log_expit(-x[0]))).sum()

    def grad(x):
        return np.array([-(w * (s - expit(x[0]))).sum()])

    res = minimize(nll, x0=[0.0], jac=grad, method="BFGS", options={"gtol": 1e-9})
    assert abs(grad(res.x)[0]) < 1e-7
    expected = 100 * expit(res.x[0])
    out = ah.score_judgements(js, bootstrap=10)["models"]["m"]
    assert out["win_rate"] == pytest.approx(expected, abs=1e-6)
    assert out["win_rate"] == pytest.approx(100 * (s * w).sum() / w.sum(), abs=1e-6)  # the closed form
    assert out["win_rate"] == pytest.approx(out["win_share"], abs=1e-6)


def scipy_bt(battles, anchor):
    """Full BT by float64 MLE: battles (a, b, score_a, weight), anchor's strength fixed at 0."""
    players = sorted({p for a, b, *_ in battles for p in (a, b)} - {anchor})
    idx = {p: i for i, p in enumerate(players)}

    def strength(x, p):
        return 0.0 if p == anchor else x[idx[p]]

    def nll_and_grad(x):
        total, grad = 0.0, np.zeros(len(players))
        for a, b, s, w in battles:
            z = strength(x, a) - strength(x, b)
            total -= w * (s * log_expit(z) + (1 - s) * log_expit(-z))
            g = -w * (s - expit(z))  # d/dz
            if a != anchor:
                grad[idx[a]] += g
            if b != anchor:
                grad[idx[b]] -= g
        return total, grad

    res = minimize(nll_and_grad, x0=np.zeros(len(players)), jac=True, method="BFGS", options={"gtol": 1e-9})
    assert np.abs(res.jac).max() < 1e-7, res.message  # at the optimum (BFGS may stop on "precision loss" there)
    return {p: res.x[idx[p]] for p in players} | {anchor: 0.0}


def test_three_models_match_full_bt_mle():
    models = ["m1", "m2", "m3"]
    js = random_judgements(models, 40, seed=2)
    battles = [(m, BASE, s, w) for m, s, w in weighted_battles(js)]
    theta = scipy_bt(battles, BASE)
    out = ah.score_judgements(js, bootstrap=10)["models"]
    for m in models:
        assert out[m]["win_rate"] == pytest.approx(100 * expit(theta[m]), abs=1e-6)
    assert len({round(out[m]["win_rate"], 3) for m in models}) == 3


def test_general_bt_fit_with_cross_battles_matches_scipy():
    rng = random.Random(3)
    players = ["base", "x", "y", "z"]
    battles = []
    for _ in range(150):
        a, b = rng.sample(players, 2)
        battles.append((a, b, rng.choice([0.0, 0.5, 1.0, 1.0]), rng.choice([1.0, 3.0])))
    ours = ah.fit_bradley_terry(battles, anchor="base")
    ref = scipy_bt(battles, "base")
    for p in players:
        assert ours[p] == pytest.approx(ref[p], abs=1e-6)


def test_all_wins_gives_100_percent():
    js = [rec(f"q{i}", g, "B>A" if g == 1 else "A>B") for i in range(5) for g in (1, 2)]
    out = ah.score_judgements(js, bootstrap=10)["models"]["m"]
    assert out["win_rate"] == pytest.approx(100.0, abs=1e-6)
    assert out["ci"][0] == pytest.approx(100.0, abs=1e-6)


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    js = random_judgements(["m1", "m2"], 80, seed=4)
    a = ah.score_judgements(js, seed=7)
    b = ah.score_judgements(js, seed=7)
    c = ah.score_judgements(js, seed=8)
    assert a == b
    assert a["bootstrap"] == 100
    for m in ("m1", "m2"):
        lo, hi = a["models"][m]["ci"]
        assert lo < a["models"][m]["win_rate"] < hi
        assert 0 < hi - lo < 40
    assert a["models"]["m1"]["ci"] != c["models"]["m1"]["ci"]


# -- files ---------------------------------------------------------------------------------------------------------


def test_load_questions_and_answers(tmp_path):
    qpath = tmp_path / "question.jsonl"
    qpath.write_text("\n".join(json.dumps({"question_id": f"q{i}", "category": "arena-hard-v0.1", "cluster": "c",
                                            "turns": [{"content": f"Question {i}?"}]}) for i in range(3)) + "\n")
    qs = ah.load_questions(qpath)
    assert [q["question"] for q in qs] == ["Question 0?", "Question 1?", "Question 2?"]
    apath = ah.write_answers(tmp_path / "model_answer" / "gpt-4-0314.jsonl", "gpt-4-0314",
                             {"q0": "a0", "q1": "a1", "q2": "a2"})
    row = json.loads(apath.read_text().splitlines()[0])
    assert row["model_id"] == "gpt-4-0314" and row["choices"][0]["turns"][0]["token_len"] == 1
    assert ah.load_answers(apath) == {"q0": "a0", "q1": "a1", "q2": "a2"}
    with pytest.raises(FileNotFoundError, match=r"question\.jsonl.*arena-hard-auto"):
        ah.load_questions(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match=r"gpt-4-0314\.jsonl"):
        ah.load_answers(tmp_path / "nope.jsonl")


# -- the LLM judge through the fake server -------------------------------------------------------------------------


_ANSWERS = re.compile(r"Assistant A's Answer\|>\n(.*?)\n<\|The End.*?Assistant B's Answer\|>\n(.*?)\n<\|The End", re.S)


def verdict_rule(content: str, n: int) -> Reply:
    """Good answers (containing 'GOOD') beat others strongly; question 'q-garbage' gets no label; equal -> tie."""
    if "q-garbage" in content:
        return Reply(content="My answer: ... I cannot decide [[A>>>B]]")
    a, b = _ANSWERS.search(content).groups()
    ga, gb = "GOOD" in a, "GOOD" in b
    label = "A=B" if ga == gb else ("A>>B" if ga else "B>>A")
    return Reply(content=f"My own answer: something.\nCompared with it, ... [[A>B]] was my first thought.\n"
                         f"My final verdict is: [[{label}]]")


@pytest.fixture
def server(monkeypatch, tmp_path):
    for var in ("PREFOPT_JUDGE_BASE_URL", "PREFOPT_JUDGE_MODEL", "PREFOPT_JUDGE_API_KEY", "OPENAI_API_KEY",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    fake = FakeOpenAI()
    fake.rule = verdict_rule
    yield fake
    fake.close()


def test_judge_answers_with_fake_server_and_cache(server, tmp_path):
    questions = [{"question_id": q, "turns": [{"content": f"Question {q}?"}]} for q in ("q1", "q2", "q-garbage")]
    baseline = {"q1": "base answer", "q2": "GOOD base answer", "q-garbage": "base"}
    models = {"good": {"q1": "GOOD one", "q2": "GOOD two", "q-garbage": "x"},
              "weak": {"q1": "meh", "q2": "meh", "q-garbage": "y"}}
    client = JudgeClient("judge-test", base_url=server.url, cache_dir=tmp_path / "cache", max_retries=1, timeout=5)
    records = ah.judge_answers(client, questions, models, baseline)
    assert server.count() == 12
    got = {(r["model"], r["question_id"], r["game"]): r["verdict"] for r in records}
    assert got == {
        ("good", "q1", 1): "B>>A", ("good", "q1", 2): "A>>B", ("good", "q2", 1): "A=B", ("good", "q2", 2): "A=B",
        ("good", "q-garbage", 1): None, ("good", "q-garbage", 2): None,
        ("weak", "q1", 1): "A=B", ("weak", "q1", 2): "A=B", ("weak", "q2", 1): "A>>B", ("weak", "q2", 2): "B>>A",
        ("weak", "q-garbage", 1): None, ("weak", "q-garbage", 2): None,
    }
    body = server.requests[0]["body"]
    assert body["temperature"] == 0.0 and body["messages"][0]["role"] == "system"
    assert "own answer" in body["messages"][0]["content"] and "{question}" not in json.dumps(body)
    scores = ah.score_judgements(records, bootstrap=20)["models"]
    assert scores["good"]["win_rate"] == pytest.approx(100 * (6 + 1) / (6 + 2))  # 2 strong wins, 2 ties
    assert scores["weak"]["win_rate"] == pytest.approx(100 * 1 / 8)  # 2 ties, 2 strong losses
    assert scores["good"]["invalid"] == 2 and scores["good"]["counts"]["A=B"] == 2

    again = ah.judge_answers(client, questions, models, baseline)
    assert server.count() == 12  # a rerun costs zero calls
    assert [{k: r[k] for k in ("model", "question_id", "game", "verdict")} for r in again] == \
           [{k: r[k] for k in ("model", "question_id", "game", "verdict")} for r in records]
    assert all(r["cached"] for r in again)


def test_judge_answers_with_a_callable_and_missing_answers():
    questions = [{"question_id": "q1", "turns": [{"content": "Hi?"}]}]
    seen = []

    def judge(messages):
        seen.append(messages)
        return "Mine.\n[[B>A]]"

    records = ah.judge_answers(judge, questions, {"m": {"q1": "model text"}}, {"q1": "baseline text"})
    assert [r["verdict"] for r in records] == ["B>A", "B>A"]
    assert "baseline text" in seen[0][1]["content"].split("Assistant B")[0]  # game 1: baseline is A
    assert "model text" in seen[1][1]["content"].split("Assistant B")[0]  # game 2: model is A
    with pytest.raises(KeyError, match="no answer"):
        ah.judge_answers(judge, questions, {"m": {}}, {"q1": "b"})


# -- the small world -----------------------------------------------------------------------------------------------


def test_gap_labels():
    kw = dict(tie_margin=0.1, strong_margin=1.0)
    assert [gap_label(g, **kw) for g in (2.0, 0.5, 0.05, -0.05, -0.5, -2.0)] == \
           ["A>>B", "A>B", "A=B", "A=B", "B>A", "B>>A"]


def test_small_world_end_to_end():
    world = SmallWorld()
    questions = arena_questions(world, 12, seed=0)
    rng = random.Random(0)
    baseline = {q["question_id"]: world.base_response(q["question"], rng) for q in questions}

    def best_of(q, k):
        cands = [world.base_response(q["question"], rng) for _ in range(k)]
        return max(cands, key=lambda r: world.hidden_reward(q["question"], r))

    models = {"same": dict(baseline),  # identical answers: every game a tie -> exactly 50%
              "best-of-8": {q["question_id"]: best_of(q, 8) for q in questions}}
    records = ah.judge_answers(HiddenRewardArenaJudge(world), questions, models, baseline)
    assert len(records) == 2 * 2 * 12
    scores = ah.score_judgements(records)
    assert scores["models"]["same"]["win_rate"] == pytest.approx(50.0)
    assert scores["models"]["same"]["counts"]["A=B"] == 24
    best = scores["models"]["best-of-8"]
    assert best["win_rate"] > 60 and best["invalid"] == 0
    assert best["ci"][0] <= best["win_rate"] <= best["ci"][1]
    # a position-biased judge still gives a symmetric answer for identical responses thanks to the swap
    biased = ah.judge_answers(HiddenRewardArenaJudge(world, position_bias=0.3), questions, {"same": baseline}, baseline)
    assert ah.score_judgements(biased)["models"]["same"]["win_rate"] == pytest.approx(50.0)
