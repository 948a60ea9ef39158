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
    for rule in ah.VERDICT_RULES:
        assert ah.parse_verdict(f"My own answer: 42.\n\nBoth are fine.\nMy final verdict is: [[{label}]]", rule) == label


def official_reference(text):
    """arena-hard-auto v0.1's label rule, restated here: the distinct non-empty matches of two brackets around
    upper-case A/B and < > = ; none -> (None, ask again); one -> it (dropped unless one of the five); more -> dropped."""
    found = set()
    i = 0
    while True:
        start = text.find("[[", i)
        if start < 0:
            break
        end = text.find("]]", start + 2)
        inner = text[start + 2:end] if end >= 0 else ""
        if end >= 0 and inner and all(c in "AB<>=" for c in inner):
            found.add(inner)
            i = end + 2
        else:
            i = start + 1
    if not found:
        return None, True
    if len(found) > 1:
        return None, False
    label = found.pop()
    return (label if label in ("A>>B", "A>B", "A=B", "B>A", "B>>A") else None), False


CATALOGUE = {  # judge answer: (official verdict, official asks again, our "last" verdict)
    "My final verdict is: [[A>B]]": ("A>B", False, "A>B"),
    "I first thought [[A>B]] but on reflection [[B>>A]]": (None, False, "B>>A"),  # two different labels
    "[[B>A]] ... as said, [[B>A]]": ("B>A", False, "B>A"),  # the same label twice
    "no verdict here": (None, True, None),
    "": (None, True, None),
    "[[a>b]]": (None, True, None),  # lowercase: no label for the official pattern
    "[[ A>B ]]": (None, True, None),  # space-padded: no label officially, an invalid token for ours
    "[[A > B]]": (None, True, None),
    "[[A>>>B]]": (None, False, None),  # one non-standard label: show_result.py gives it weight 0
    "[[B<A]]": (None, False, None),
    "Code x[[0]] then [[A=B]]": ("A=B", False, "A=B"),
    "[[A>B]] then a lookalike [[A>>>B]]": (None, False, None),
    "[A>B]": (None, True, None),
}


@pytest.mark.parametrize("text", sorted(CATALOGUE))
def test_verdict_rules_on_a_catalogue(text):
    official, again, last = CATALOGUE[text]
    assert official_reference(text) == (official, again)
    assert ah.verdict_status(text, "official") == (official, again)
    assert ah.parse_verdict(text) == official  # official is the default
    assert ah.parse_verdict(text, "last") == last
    with pytest.raises(ah.ConfigError, match="verdict rule"):
        ah.parse_verdict(text, "first")


def test_parse_none_is_invalid():
    assert ah.parse_verdict(None) is None and ah.verdict_status(None) == (None, True)


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
    for rule in ah.BOOTSTRAP_RULES:
        a = ah.score_judgements(js, seed=7, bootstrap_rule=rule)
        b = ah.score_judgements(js, seed=7, bootstrap_rule=rule)
        c = ah.score_judgements(js, seed=8, bootstrap_rule=rule)
        assert a == b and a["bootstrap"] == 100 and a["bootstrap_rule"] == rule
        for m in ("m1", "m2"):
            lo, hi = a["models"][m]["ci"]
            assert lo < a["models"][m]["win_rate"] < hi
            assert 0 < hi - lo < 40
            assert a["models"][m]["bootstrap_rule"] == rule
        assert a["models"]["m1"]["ci"] != c["models"]["m1"]["ci"]
    with pytest.raises(ah.ConfigError, match="bootstrap rule"):
        ah.score_judgements(js, bootstrap_rule="rows")


def test_battle_row_bootstrap_matches_a_float64_reference():
    """show_result.py's interval, restated: battle rows (strong x3, tie = one row worth 1/2) of all models in one
    frame, DataFrame.sample(frac=1, replace=True) from RandomState(seed), per round the BT strengths (closed form
    here: the log-odds of each model's row share), 2.5/97.5 percentiles of the strengths, then win rates."""
    import pandas as pd

    js = random_judgements(["m1", "m2", "m3"], 60, seed=11)
    rows = []
    for j in js:
        v = j["verdict"]
        if v is None:
            continue
        model_is_a = j["game"] == 2
        score = 0.5 if v == "A=B" else float(v.startswith("A") == model_is_a)
        rows += [{"model": j["model"], "score": score}] * (3 if ">>" in v else 1)
    frame = pd.DataFrame(rows)
    for seed in (42, 5):
        rs = np.random.RandomState(seed)
        boot = {m: [] for m in ("m1", "m2", "m3")}
        for _ in range(100):
            sample = frame.sample(frac=1.0, replace=True, random_state=rs)
            share = sample.groupby("model")["score"].mean()
            for m in boot:
                boot[m].append(np.log(share[m] / (1 - share[m])))
        got = ah.score_judgements(js, seed=seed)
        assert got["seed"] == seed and got["bootstrap_rule"] == "battles"
        for m, strengths in boot.items():
            lo, hi = (100 / (1 + np.exp(-np.percentile(strengths, q))) for q in (2.5, 97.5))
            assert got["models"][m]["ci"] == pytest.approx([lo, hi], abs=1e-7)
    assert ah.score_judgements(js)["seed"] == 42  # show_result.py's seed by default


def test_question_bootstrap_is_wider_than_battle_rows():
    js = random_judgements(["m1"], 200, seed=3)
    width = {rule: np.subtract(*ah.score_judgements(js, bootstrap_rule=rule)["models"]["m1"]["ci"][::-1])
             for rule in ah.BOOTSTRAP_RULES}
    assert width["questions"] != width["battles"] and width["battles"] > 0


def test_mixed_verdict_rules_are_refused():
    js = [dict(rec("q1", 1, "A>B"), verdict_rule="official"), dict(rec("q1", 2, "B>A"), verdict_rule="last")]
    with pytest.raises(ah.ConfigError, match="mix verdict rules"):
        ah.score_judgements(js)


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


SYSTEM_PROMPT = ("You are Referee Quokka-7. Weigh two replies by pineapple-grade rigour.\n\n"
                 "Close with exactly one token among [[A>>B]] [[A>B]] [[A=B]] [[B>A]] [[B>>A]].")
TEMPLATE = "<<Q>>\n{question_1}\n<<FIRST>>\n{answer_1}\n<</FIRST>>\n<<SECOND>>\n{answer_2}\n<</SECOND>>"
RETRY = "Quokka-7, wrap up with your bracketed verdict token please."


def make_checkout(root, questions, baseline, *, attempts=2, with_retry=True):
    """A fake arena-hard-auto checkout in the v0.1 layout, with our own invented prompt text."""
    (root / "config").mkdir(parents=True)
    (root / "config" / "judge_config.yaml").write_text(
        "name: judgment config file for a test\nbench_name: arena-hard-v0.1\njudge_model: judge-official\n"
        "reference: False\nref_model: null\nbaseline: True\nbaseline_model: gpt-4-0314\npairwise: True\n"
        f"temperature: 0\nmax_tokens: 321\nregex_pattern: \\[\\[([AB<>=]+)\\]\\]\n"
        f"number_of_judgment_attempts: {attempts}\nsystem_prompt: {json.dumps(SYSTEM_PROMPT)}\n"
        f"prompt_template: [{json.dumps(TEMPLATE)}]\nmodel_list:\n  - somebody\n")
    if with_retry:
        (root / "gen_judgment.py").write_text(
            "def judgment(conv):\n    conv.append({'role': 'user', 'content': user_prompt})\n"
            f"    conv.append({{'role': 'user', 'content': {RETRY!r}}})\n")
    data = root / "data" / "arena-hard-v0.1"
    data.mkdir(parents=True)
    (data / "question.jsonl").write_text("".join(json.dumps({"question_id": q, "category": "c", "cluster": "c",
                                                             "turns": [{"content": f"Question {q}?"}]}) + "\n"
                                                 for q in questions))
    ah.write_answers(data / "model_answer" / "gpt-4-0314.jsonl", "gpt-4-0314", baseline)
    return root


_SHOWN = re.compile(r"<<FIRST>>\n(.*?)\n<</FIRST>>\n<<SECOND>>\n(.*?)\n<</SECOND>>", re.S)


def checkout_rule(content: str, n: int) -> Reply:
    """Good answers (containing 'GOOD') beat others strongly; 'q-garbage' gets a lone non-standard label;
    'q-two' two different labels; 'q-retry' no label until the retry request comes."""
    if content == RETRY:
        return Reply(content="Fine: [[B>A]]")
    if "q-garbage" in content:
        return Reply(content="My answer: ... I cannot decide [[A>>>B]]")
    if "q-two" in content:
        return Reply(content="First [[A>B]], then [[B>A]].")
    if "q-retry" in content:
        return Reply(content="My own answer, and then I ran out of words.")
    a, b = _SHOWN.search(content).groups()
    ga, gb = "GOOD" in a, "GOOD" in b
    label = "A=B" if ga == gb else ("A>>B" if ga else "B>>A")
    return Reply(content=f"My own answer: something.\nMy final verdict is: [[{label}]]")


@pytest.fixture
def server(monkeypatch, tmp_path):
    for var in ("PREFOPT_JUDGE_BASE_URL", "PREFOPT_JUDGE_MODEL", "PREFOPT_JUDGE_API_KEY", "OPENAI_API_KEY",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    fake = FakeOpenAI()
    fake.rule = checkout_rule
    yield fake
    fake.close()


QIDS = ("q1", "q2", "q-garbage", "q-two", "q-retry")


def test_checkout_config_reaches_the_judge_verbatim_with_retry_and_cache(server, tmp_path):
    baseline = {"q1": "base answer", "q2": "GOOD base answer", "q-garbage": "b", "q-two": "b", "q-retry": "b"}
    root = make_checkout(tmp_path / "arena-hard-auto", QIDS, baseline)
    config = ah.load_judge_config(root)
    assert config.system_prompt == SYSTEM_PROMPT and config.prompt_templates == (TEMPLATE,)
    assert (config.attempts, config.temperature, config.max_tokens) == (2, 0.0, 321)
    assert config.retry_request == RETRY and config.baseline_model == "gpt-4-0314"
    questions = ah.load_questions(ah.checkout_questions_path(root))
    base = ah.load_answers(ah.checkout_answers_path(root, config.baseline_model))
    models = {"good": {"q1": "GOOD one", "q2": "GOOD two", "q-garbage": "x", "q-two": "x", "q-retry": "x"}}
    client = JudgeClient("judge-test", base_url=server.url, cache_dir=tmp_path / "cache", max_retries=1, timeout=5)
    records = ah.judge_answers(client, questions, models, base, config=config)
    assert server.count() == 12  # 10 games, the 2 games of q-retry asked twice
    bodies = [r["body"] for r in server.requests]
    assert all(b["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT} for b in bodies)  # verbatim
    users = {b["messages"][1]["content"] for b in bodies}
    assert TEMPLATE.format(question_1="Question q1?", answer_1="base answer", answer_2="GOOD one") in users  # game 1
    assert TEMPLATE.format(question_1="Question q1?", answer_1="GOOD one", answer_2="base answer") in users  # game 2
    assert all(b["temperature"] == 0.0 and b["max_tokens"] == 321 for b in bodies)
    retried = [r["body"]["messages"] for r in server.requests if r["body"]["messages"][-1]["content"] == RETRY]
    assert len(retried) == 2 and [m["role"] for m in retried[0]] == ["system", "user", "assistant", "user"]
    assert retried[0][2]["content"] == "My own answer, and then I ran out of words."
    got = {(r["question_id"], r["game"]): (r["verdict"], r["attempts"]) for r in records}
    assert got == {("q1", 1): ("B>>A", 1), ("q1", 2): ("A>>B", 1), ("q2", 1): ("A=B", 1), ("q2", 2): ("A=B", 1),
                   ("q-garbage", 1): (None, 1), ("q-garbage", 2): (None, 1), ("q-two", 1): (None, 1),
                   ("q-two", 2): (None, 1), ("q-retry", 1): ("B>A", 2), ("q-retry", 2): ("B>A", 2)}
    retry_record = next(r for r in records if r["question_id"] == "q-retry")
    assert retry_record["judgement"] == "\nMy own answer, and then I ran out of words.\nFine: [[B>A]]"
    assert all(r["verdict_rule"] == "official" for r in records)
    scores = ah.score_judgements(records, bootstrap=20)["models"]["good"]
    # q1: 2 strong wins (6 rows); q2: 2 ties; q-retry: game 1 B>A = model wins, game 2 B>A = baseline wins
    assert scores["win_rate"] == pytest.approx(100 * (6 + 1 + 1) / (6 + 2 + 2))
    assert scores["invalid"] == 4 and scores["verdict_rule"] == "official"

    again = ah.judge_answers(client, questions, models, base, config=config)
    assert server.count() == 12 and all(r["cached"] for r in again)  # a rerun costs zero calls
    once = ah.judge_answers(client, questions, models, base, config=config, attempts=1, verdict_rule="last")
    assert server.count() == 12  # the first attempts are cached; nobody is asked again
    assert {r["question_id"]: r["verdict"] for r in once if r["game"] == 1}["q-two"] == "B>A"  # the last label
    assert all(r["attempts"] == 1 for r in once)


def test_checkout_errors_are_one_line(tmp_path):
    with pytest.raises(ah.ConfigError, match="no arena-hard-auto checkout"):
        ah.load_judge_config(tmp_path / "nowhere")
    (tmp_path / "v2" / "config").mkdir(parents=True)
    (tmp_path / "v2" / "config" / "arena-hard-v0.1.yaml").write_text("judge_model: x\n")
    with pytest.raises(ah.ConfigError, match="v2 layout.*3071ef95d913"):
        ah.load_judge_config(tmp_path / "v2")
    root = make_checkout(tmp_path / "ok", ["q1"], {"q1": "b"}, with_retry=False)
    config = ah.load_judge_config(root)
    assert config.retry_request == ah.FALLBACK_RETRY_REQUEST and "prefopt" in config.retry_request_source
    text = (root / "config" / "judge_config.yaml").read_text()
    (root / "config" / "judge_config.yaml").write_text(text.replace("number_of_judgment_attempts: 2\n", ""))
    with pytest.raises(ah.ConfigError, match="lacks number_of_judgment_attempts") as info:
        ah.load_judge_config(root)
    assert "\n" not in str(info.value)
    with pytest.raises(ah.ConfigError, match="judge config"):
        ah.judge_answers(lambda m: "[[A>B]]", [{"question_id": "q1", "turns": [{"content": "?"}]}],
                         {"m": {"q1": "a"}}, {"q1": "b"})


def test_judge_answers_with_a_callable_and_missing_answers(tmp_path):
    config = ah.load_judge_config(make_checkout(tmp_path / "c", ["q1"], {"q1": "b"}))
    questions = [{"question_id": "q1", "turns": [{"content": "Hi?"}]}]
    seen = []

    def judge(messages):
        seen.append(messages)
        return "Mine.\n[[B>A]]"

    records = ah.judge_answers(judge, questions, {"m": {"q1": "model text"}}, {"q1": "baseline text"}, config=config)
    assert [r["verdict"] for r in records] == ["B>A", "B>A"]
    assert "baseline text" in seen[0][1]["content"].split("<<SECOND>>")[0]  # game 1: baseline is A
    assert "model text" in seen[1][1]["content"].split("<<SECOND>>")[0]  # game 2: model is A
    with pytest.raises(KeyError, match="no answer"):
        ah.judge_answers(judge, questions, {"m": {}}, {"q1": "b"}, config=config)


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
