"""Tests for prefopt.judges — the one OpenAI-compatible judge client, its cache and retries, and the pairwise LLM
judge (SPEC §7 "Judges", §6.1 step 6, §8).

The only test double is at the edge we cannot reach, the paid judge: a real HTTP server on 127.0.0.1 (an ephemeral
port) that speaks the OpenAI chat-completions protocol (POST /v1/chat/completions, the OpenAI JSON response shape) and
misbehaves on purpose when a test tells it to: it sleeps past the client's timeout, answers 429 (with Retry-After) or
500, drops the connection, returns non-JSON, a malformed verdict or a 4xx. It records every request (headers, body,
how often each distinct message was asked), so the tests can count what would have been paid for. Everything else is
the real code: prefopt.judges, the shipped templates and prefopt.winrate. Timeouts and back-offs are tiny; every
request loop in here is bounded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import secrets
import shutil
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from prefopt.judges import (
    DEFAULT_BASE_URL,
    TEMPLATE_DIR,
    JudgeClient,
    JudgeError,
    JudgeTemplate,
    PairwiseLLMJudge,
    judge_both_orders_many,
    judge_many,
)
from prefopt.smallworld.world import HiddenRewardJudge, SmallWorld
from prefopt.winrate import judge_both_orders, win_rate

HH = "hh_helpfulness"
TLDR = "tldr_summary"

# ---------------------------------------------------------------------------------------------------------------
# The local OpenAI-compatible server
# ---------------------------------------------------------------------------------------------------------------


from fake_openai import FakeOpenAI, Reply, prefer_longer  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture
def server(fake_judge):
    """The session's fake judge server (tests/conftest.py), reset around each test: default rule, no records."""
    return fake_judge


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No judge settings or proxies leak in from the machine; the default cache goes to tmp, never ~/.cache."""
    for var in ("PREFOPT_JUDGE_BASE_URL", "PREFOPT_JUDGE_MODEL", "PREFOPT_JUDGE_API_KEY", "OPENAI_API_KEY",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PREFOPT_JUDGE_CACHE", str(tmp_path / "default-cache"))


def make_client(server: FakeOpenAI, cache_dir: Path, **overrides) -> JudgeClient:
    kwargs = dict(model="judge-test", base_url=server.url, cache_dir=cache_dir, max_retries=4, timeout=0.25,
                  backoff_base=0.01, backoff_max=0.04)
    kwargs.update(overrides)
    return JudgeClient(**kwargs)


def hh_prompt(tag: str) -> str:
    return f"\n\nHuman: Please help me with {tag}.\n\nAssistant:"


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------


def test_configuration_from_environment_with_explicit_overrides(server, tmp_path, monkeypatch):
    msg = [{"role": "user", "content": "config check"}]
    monkeypatch.setenv("PREFOPT_JUDGE_BASE_URL", server.url)
    monkeypatch.setenv("PREFOPT_JUDGE_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fallback")

    # Everything from the environment; the key falls back to OPENAI_API_KEY.
    with JudgeClient(use_cache=False) as client:
        assert client.base_url == server.url and client.model == "env-model"
        client.complete(msg)
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer sk-fallback"
    assert server.requests[-1]["body"]["model"] == "env-model"

    # PREFOPT_JUDGE_API_KEY wins over OPENAI_API_KEY; explicit arguments win over both.
    monkeypatch.setenv("PREFOPT_JUDGE_API_KEY", "sk-prefopt")
    with JudgeClient(use_cache=False) as client:
        client.complete(msg)
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer sk-prefopt"
    with JudgeClient("arg-model", api_key="sk-arg", use_cache=False) as client:
        client.complete(msg)
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer sk-arg"
    assert server.requests[-1]["body"]["model"] == "arg-model"

    # An explicit base URL wins over the environment's (here a closed port that would fail).
    monkeypatch.setenv("PREFOPT_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    with JudgeClient(base_url=server.url, use_cache=False, max_retries=0) as client:
        client.complete(msg)
    assert server.count() == 4

    # A local server may need no key: then no Authorization header at all.
    monkeypatch.delenv("PREFOPT_JUDGE_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    with JudgeClient(base_url=server.url, use_cache=False) as client:
        assert not client.has_api_key
        client.complete(msg)
    assert "Authorization" not in server.requests[-1]["headers"]

    # Defaults: the OpenAI API and ~/.cache unless PREFOPT_JUDGE_CACHE says otherwise (the fixture sets it).
    monkeypatch.delenv("PREFOPT_JUDGE_BASE_URL")
    with JudgeClient() as client:
        assert client.base_url == DEFAULT_BASE_URL
        assert client.cache_dir == tmp_path / "default-cache"
    monkeypatch.delenv("PREFOPT_JUDGE_MODEL")
    with pytest.raises(ValueError, match="PREFOPT_JUDGE_MODEL"):
        JudgeClient()


# ---------------------------------------------------------------------------------------------------------------
# complete(): response shape, cache entry format
# ---------------------------------------------------------------------------------------------------------------


def test_complete_returns_the_answer_and_writes_a_self_describing_cache_entry(server, tmp_path):
    cache = tmp_path / "cache"
    server.rule = lambda content, n: Reply(content="Preferred: A")
    msgs = [{"role": "system", "content": "be terse"}, {"role": "user", "content": "which one?"}]
    with make_client(server, cache) as client:
        out = client.complete(msgs, max_tokens=5, logprobs=True, top_logprobs=3, seed=7)
    assert out["content"] == "Preferred: A" and out["cached"] is False
    assert [t["token"] for t in out["logprobs"]["content"][0]["top_logprobs"]] == ["A", "B", "C"]
    body = server.requests[0]["body"]
    assert body["logprobs"] is True and body["top_logprobs"] == 3 and body["seed"] == 7
    assert body["temperature"] == 0.0 and body["max_tokens"] == 5 and body["messages"] == msgs
    assert out["usage"]["prompt_tokens"] == 4 and out["usage"]["completion_tokens"] == 2

    files = cache_files(cache)
    assert len(files) == 1
    entry = json.loads(files[0].read_text())
    # The key is the sha256 of the canonical JSON of the request object (the format the module docstring states).
    canonical = json.dumps(entry["request"], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert entry["key"] == files[0].stem == hashlib.sha256(canonical.encode()).hexdigest() == out["key"]
    assert files[0].parent.name == entry["key"][:2]
    req = entry["request"]
    assert req["messages"] == msgs and req["model"] == "judge-test" and req["max_tokens"] == 5
    assert req["logprobs"] is True and req["top_logprobs"] == 3 and req["extra"] == {"seed": 7}
    assert entry["response"]["content"] == "Preferred: A"
    assert entry["response"]["model"] == "judge-test-2024-01-01"
    assert entry["response"]["usage"] == out["usage"]
    assert abs(entry["created"] - time.time()) < 60 and entry["created_utc"].endswith("+00:00")
    assert not any(p.name.endswith(".tmp") for p in cache.rglob("*"))  # atomic write left no temp file

    # Same inputs, fresh client: from disk, no request. Any setting that changes the request is a different entry.
    with make_client(server, cache) as client:
        again = client.complete(msgs, max_tokens=5, logprobs=True, top_logprobs=3, seed=7)
        assert again["cached"] is True and again["content"] == out["content"] and again["logprobs"] == out["logprobs"]
        assert server.count() == 1
        client.complete(msgs, max_tokens=5, logprobs=True, top_logprobs=3, seed=8)
        client.complete(msgs, max_tokens=6, logprobs=True, top_logprobs=3, seed=7)
        client.complete(msgs, max_tokens=5, seed=7)
        client.complete(msgs, max_tokens=5, logprobs=True, top_logprobs=3, seed=7, temperature=0.5)
    assert server.count() == 5
    # Another model is another judge; another URL serving the same model is the same judge (a dead port here).
    with make_client(server, cache, model="judge-other") as client:
        assert client.complete(msgs, max_tokens=5, logprobs=True, top_logprobs=3, seed=7)["cached"] is False
    assert server.count() == 6
    with make_client(server, cache, base_url="http://127.0.0.1:9/v1", max_retries=0) as client:
        assert client.complete(msgs, max_tokens=5, logprobs=True, top_logprobs=3, seed=7)["cached"] is True


# ---------------------------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------------------------


FAILURES = {  # tag -> (how the first n calls fail, n)
    "q-timeout": (Reply(delay=0.6), 2),  # sleeps past the 0.25 s client timeout
    "q-429": (Reply(status=429, headers={"Retry-After": "0"}), 3),
    "q-500": (Reply(status=500), 2),
    "q-503": (Reply(status=503), 4),  # = max_retries: the last allowed try succeeds
    "q-drop": (Reply(drop=True), 2),  # connection closed without an answer
    "q-garbage": (Reply(raw=b"<html>502 Bad Gateway</html>"), 1),  # 200 with a body that is not JSON
    "q-nochoices": (Reply(raw=b'{"object": "chat.completion", "choices": []}'), 1),
    "q-fine": (Reply(), 0),
}


def failing_rule(content: str, n: int) -> Reply:
    for tag, (reply, first_n) in FAILURES.items():
        if tag in content and n <= first_n:
            return reply
    return Reply()


def test_every_judgement_returns_under_timeouts_429_500_and_garbage_and_a_rerun_pays_nothing(server, tmp_path):
    server.rule = failing_rule
    cache = tmp_path / "cache"
    triples = [(hh_prompt(tag), f"answer {i} for {tag}, the long one", f"short {i}")
               for tag in FAILURES for i in range(2)]
    with make_client(server, cache) as client:
        judge = PairwiseLLMJudge(client, HH)
        verdicts = judge_many(judge, triples, workers=6, progress=False)
    assert verdicts == ["A"] * len(triples)  # none lost: the longer response (A) wins every one
    for tag, (_, first_n) in FAILURES.items():
        # each of the two comparisons of this tag: first_n failures, then exactly one success
        assert server.count(tag) == 2 * (first_n + 1), tag
    assert len(cache_files(cache)) == len(triples)

    # A fresh client over the same inputs: everything from the cache, zero requests.
    before = server.count()
    with make_client(server, cache) as client:
        judge = PairwiseLLMJudge(client, HH)
        assert judge_many(judge, triples, workers=6, progress=False) == verdicts
    assert server.count() == before


def test_retry_after_is_honoured(server, tmp_path, monkeypatch):
    delays = []  # every wait the client chose between two tries, in order
    choose = JudgeClient._retry_delay
    monkeypatch.setattr(JudgeClient, "_retry_delay",
                        lambda self, attempt, headers: delays.append(choose(self, attempt, headers)) or delays[-1])
    msg = [{"role": "user", "content": "rate limited"}]
    server.rule = lambda c, n: Reply(status=429, headers={"Retry-After": "1"}) if n == 1 else Reply(content="ok")
    with make_client(server, tmp_path / "c1", backoff_base=0.001, backoff_max=0.002) as client:
        t0 = time.monotonic()
        assert client.complete(msg)["content"] == "ok"
        assert time.monotonic() - t0 >= 0.95  # waited what the server asked, not the 2 ms back-off
    assert server.count() == 2 and delays == [1.0]

    msg = [{"role": "user", "content": "rate limited in ms"}]
    server.rule = lambda c, n: Reply(status=429, headers={"retry-after-ms": "300"}) if n <= 2 else Reply(content="ok")
    with make_client(server, tmp_path / "c2", backoff_base=0.001, backoff_max=0.002) as client:
        t0 = time.monotonic()
        assert client.complete(msg)["content"] == "ok"
        assert time.monotonic() - t0 >= 0.55
    assert server.count("in ms") == 3 and delays[1:] == [0.3, 0.3]

    # Without the header the (tiny) exponential back-off applies.
    msg = [{"role": "user", "content": "rate limited, no header"}]
    server.rule = lambda c, n: Reply(status=429) if n <= 2 else Reply(content="ok")
    with make_client(server, tmp_path / "c3", backoff_base=0.001, backoff_max=0.002) as client:
        assert client.complete(msg)["content"] == "ok"
    # The waits the client chose, not the wall clock (which a loaded machine stretches): at most backoff_max, 2 ms.
    assert len(delays) == 5 and all(0 < d <= 0.002 for d in delays[3:]), delays
    assert server.count("no header") == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_raise_after_exactly_one_call(server, tmp_path, status):
    server.rule = lambda c, n: Reply(status=status)
    with make_client(server, tmp_path / "cache") as client:
        with pytest.raises(JudgeError, match=f"HTTP {status}"):
            client.complete([{"role": "user", "content": "bad request"}])
    assert server.count() == 1
    assert cache_files(tmp_path / "cache") == []


def test_exhausted_retries_raise_and_cache_nothing(server, tmp_path):
    server.rule = lambda c, n: Reply(status=500)
    msg = [{"role": "user", "content": "always broken"}]
    with make_client(server, tmp_path / "cache", max_retries=3) as client:
        with pytest.raises(JudgeError, match="failed 4 times; last: HTTP 500"):
            client.complete(msg)
        assert server.count() == 4
        server.rule = lambda c, n: Reply(raw=b"not json at all")
        with pytest.raises(JudgeError, match="not a chat completion"):
            client.complete(msg)
        assert server.count() == 8
    assert cache_files(tmp_path / "cache") == []
    with make_client(server, tmp_path / "cache", base_url="http://127.0.0.1:9/v1", max_retries=2) as client:
        with pytest.raises(JudgeError, match="failed 3 times; last: connection error"):
            client.complete(msg)


# ---------------------------------------------------------------------------------------------------------------
# Verdict parsing
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, verdict",
    [
        ("Comparison: A is more direct.\nPreferred: A", "A"),
        ("Comparison: B answers the question.\nPreferred: B\n\n  ", "B"),
        ("Comparison: same.\n  preferred :   tie  ", "tie"),
        ("PREFERRED: b", "B"),
        ("Preferred:A", "A"),
        ("Comparison: A.\nPreferred: A.", "invalid"),
        ("Comparison: A.\n**Preferred: A**", "invalid"),
        ("Comparison: A.\nPreferred: C", "invalid"),
        ("Comparison: A.\nPreferred: A or B", "invalid"),
        ("Comparison: A.\nPreferred: A\nI hope this helps.", "invalid"),
        ("Comparison: A.\nMore helpful: A", "invalid"),
        ("Preferred: A, because it is shorter", "invalid"),
        ("I prefer A.", "invalid"),
        ("", "invalid"),
    ],
)
def test_verdicts_are_parsed_strictly_and_any_answer_is_cached(server, tmp_path, caplog, answer, verdict):
    caplog.set_level(logging.DEBUG, logger="prefopt.judges")
    server.rule = lambda c, n: Reply(content=answer)
    cache = tmp_path / "cache"
    for _ in range(2):  # the second round is a fresh client: the raw answer comes from the cache, not re-asked
        with make_client(server, cache) as client:
            assert PairwiseLLMJudge(client, HH).compare(hh_prompt("parsing"), "one", "two") == verdict
    assert server.count() == 1
    invalid_logs = [r for r in caplog.records if "unparseable verdict" in r.getMessage()]
    if verdict == "invalid":
        assert len(invalid_logs) == 2 and all(r.levelno == logging.DEBUG for r in invalid_logs)
        assert repr(answer[:20])[1:-1] in invalid_logs[0].getMessage()
    else:
        assert invalid_logs == []


def test_shipped_templates_declare_fields_and_answer_line_and_render_in_one_pass():
    readme = (TEMPLATE_DIR / "README.md").read_text()
    for name in (HH, TLDR):
        template = JudgeTemplate.load(name)
        assert template.path == TEMPLATE_DIR / f"{name}.txt" and f"{name}.txt" in readme
        text = template.path.read_text()
        header = [line for line in text.splitlines() if line.startswith("#")]
        assert header and all(f"{{{f}}}" in "\n".join(header) for f in ("prompt", "response_a", "response_b"))
        assert template.answer_label == "Preferred" and "Preferred: tie" in "\n".join(header)
        assert not any(line.startswith("#") for line in template.body.splitlines())
        assert "Preferred: <A, B or tie>" in template.body  # the body tells the judge the answer line
        rendered = template.render("the {prompt}", "says {response_b}", "plain")
        assert "the {prompt}" in rendered and "says {response_b}" in rendered and "plain" in rendered
        assert rendered.count("{response_b}") == 1 and "{response_a}" not in rendered
        assert template.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert JudgeTemplate.load(TEMPLATE_DIR / "tldr_summary.txt").body == JudgeTemplate.load(TLDR).body
    with pytest.raises(FileNotFoundError):
        JudgeTemplate.load("no_such_template")


def test_templates_are_package_data_found_by_name_from_any_directory(tmp_path, monkeypatch):
    import prefopt
    from prefopt.judges import pairwise

    package_dir = Path(prefopt.__file__).parent
    assert Path(str(TEMPLATE_DIR)) == package_dir / "resources" / "templates"
    assert pairwise.TEMPLATE_DIR == TEMPLATE_DIR
    monkeypatch.chdir(tmp_path)  # not the repository: a name still resolves to the packaged file
    for name in (HH, TLDR):  # the Arena-Hard prompt is read from the user's arena-hard-auto checkout, not shipped
        assert (TEMPLATE_DIR / f"{name}.txt").is_file()
    assert JudgeTemplate.load(HH).path == TEMPLATE_DIR / f"{HH}.txt"
    # A relative path is a path from the working directory, and wins over a packaged name.
    (tmp_path / HH).write_text("# answer-label: Verdict\n{prompt} {response_a} {response_b}\n")
    assert JudgeTemplate.load(HH).answer_label == "Verdict" and JudgeTemplate.load(HH).path == Path(HH)


def test_judge_error_is_the_one_in_prefopt_errors():
    from prefopt import errors, judges
    from prefopt.judges import client, pairwise

    assert JudgeError is errors.JudgeError is judges.JudgeError is client.JudgeError is pairwise.JudgeError
    assert issubclass(JudgeError, errors.PrefoptError) and issubclass(JudgeError, RuntimeError)
    assert judges.JudgeClient is client.JudgeClient and judges.PairwiseLLMJudge is pairwise.PairwiseLLMJudge
    assert judges._run_pool is client._run_pool


def test_bad_templates_are_rejected(tmp_path):
    no_label = tmp_path / "no_label.txt"
    no_label.write_text("# fields\n{prompt} {response_a} {response_b}\n")
    with pytest.raises(ValueError, match="answer-label"):
        JudgeTemplate.load(no_label)
    no_field = tmp_path / "no_field.txt"
    no_field.write_text("# answer-label: Preferred\n{prompt} {response_a}\n")
    with pytest.raises(ValueError, match="response_b"):
        JudgeTemplate.load(no_field)


def _cli_samples(tmp_path: Path) -> tuple[str, str]:
    policy, baseline = tmp_path / "policy.jsonl", tmp_path / "baseline.jsonl"
    policy.write_text(json.dumps({"prompt": "hi", "completions": ["hello there"]}) + "\n")
    baseline.write_text(json.dumps({"prompt": "hi", "completions": ["hey"]}) + "\n")
    return str(policy), str(baseline)


def _one_line_error(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("prefopt judge: error: ")
    return lines[0]


def test_cli_judge_with_an_unknown_template_is_one_line_naming_it_and_the_packaged_ones(server, tmp_path, capsys,
                                                                                       monkeypatch):
    from prefopt.cli import main
    from prefopt.errors import ConfigError

    monkeypatch.setenv("PREFOPT_JUDGE_MODEL", "judge-test")
    monkeypatch.setenv("PREFOPT_JUDGE_BASE_URL", server.url)
    policy, baseline = _cli_samples(tmp_path)
    assert main(["judge", policy, baseline, str(tmp_path / "out"), "--template", "nope"]) == 2
    line = _one_line_error(capsys)
    assert "'nope'" in line and HH in line and TLDR in line
    assert server.count() == 0 and not (tmp_path / "out").exists()
    with pytest.raises(ConfigError) as info:  # also still a FileNotFoundError, as before
        JudgeTemplate.load("nope")
    assert isinstance(info.value, FileNotFoundError)


def test_cli_judge_without_a_model_is_one_line_saying_how_to_give_one(tmp_path, capsys):
    from prefopt.cli import main

    policy, baseline = _cli_samples(tmp_path)  # clean_env: no PREFOPT_JUDGE_MODEL
    assert main(["judge", policy, baseline, str(tmp_path / "out")]) == 2
    line = _one_line_error(capsys)
    assert "PREFOPT_JUDGE_MODEL" in line and "--model" in line


def test_editing_a_template_invalidates_its_cache_entries(server, tmp_path):
    cache = tmp_path / "cache"
    path = tmp_path / "mine.txt"
    original = (TEMPLATE_DIR / f"{HH}.txt").read_text()
    path.write_text(original)
    triple = (hh_prompt("template edits"), "a longer response", "short")

    def ask(template_path) -> str:
        with make_client(server, cache) as client:
            return PairwiseLLMJudge(client, template_path).compare(*triple)

    assert ask(path) == "A" and server.count() == 1
    assert ask(path) == "A" and server.count() == 1  # unchanged: cached
    # An edit to the header only: the message sent is byte-identical, yet the template's hash is in the key.
    path.write_text("# edited comment\n" + original)
    assert ask(path) == "A" and server.count() == 2
    assert server.requests[0]["content"] == server.requests[1]["content"]
    # An edit to the body: another message, another entry.
    path.write_text(original.replace("more helpful.", "more helpful to the human."))
    assert ask(path) == "A" and server.count() == 3
    # Back to the original text: its entries are found again.
    path.write_text(original)
    assert ask(path) == "A" and server.count() == 3
    # The same text under another name is another template.
    other = tmp_path / "other.txt"
    shutil.copy(path, other)
    assert ask(other) == "A" and server.count() == 4


# ---------------------------------------------------------------------------------------------------------------
# The key never leaks
# ---------------------------------------------------------------------------------------------------------------


def test_api_key_reaches_the_server_but_no_cache_file_log_record_or_exception(server, tmp_path, caplog, monkeypatch):
    key = "sk-sentinel-" + secrets.token_hex(16)
    monkeypatch.setenv("PREFOPT_JUDGE_API_KEY", key)
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    cache = tmp_path / "cache"

    def rule(content, n):
        if "echo-retry" in content and n <= 2:  # a 5xx whose body echoes the key, then success
            return Reply(status=502, echo_auth=True)
        if "echo-400" in content:
            return Reply(status=400, echo_auth=True)
        if "echo-forever" in content:
            return Reply(status=500, echo_auth=True)
        return Reply()

    server.rule = rule
    errors = []
    with JudgeClient("judge-test", base_url=server.url, cache_dir=cache, max_retries=2, timeout=0.5,
                     backoff_base=0.001, backoff_max=0.002) as client:
        assert key not in repr(client)
        judge = PairwiseLLMJudge(client, HH)
        assert judge.compare(hh_prompt("plain"), "longer one", "short") == "A"
        assert judge.compare(hh_prompt("echo-retry"), "longer one", "short") == "A"
        for tag in ("echo-400", "echo-forever"):
            with pytest.raises(JudgeError) as info:
                judge.compare(hh_prompt(tag), "longer one", "short")
            errors.append(info.value)
        with pytest.raises(JudgeError) as info:
            judge_many(judge, [(hh_prompt("echo-400"), "x", "y"), (hh_prompt("plain"), "longer one", "short")],
                       workers=2, progress=False)
        errors.append(info.value)

    # The key did reach the server, in the Authorization header, on every request...
    assert server.count() == 1 + 3 + 1 + 3 + 1
    assert all(r["headers"]["Authorization"] == f"Bearer {key}" for r in server.requests)
    # ...and the server did echo it back, so the scrubbing below is exercised, not vacuous.
    assert any("[REDACTED]" in str(e) for e in errors)
    # No exception (message, repr or full traceback with its chained causes) carries it.
    for err in errors:
        assert key not in "".join(traceback.format_exception(err)) and key not in repr(err)
    # No log record (messages, arguments, formatted exceptions) carries it; the retries were logged.
    assert any("retry" in r.getMessage() for r in caplog.records)
    assert key not in caplog.text
    for record in caplog.records:
        assert key not in record.getMessage() and key not in repr(record.args)
    # No cache file carries it (nor any header).
    files = cache_files(cache)
    assert len(files) == 2
    for f in files:
        text = f.read_text()
        assert key not in text and "Bearer" not in text and "Authorization" not in text


def _key_fragments(key: str, shortest: int = 8) -> list[str]:
    """Every substring of ``key`` of length ``shortest``: any longer substring contains one of them."""
    return sorted({key[i:i + shortest] for i in range(len(key) - shortest + 1)})


def _leaked(key: str, texts: dict[str, str]) -> list[str]:
    return [f"{where}: {frag!r}" for where, text in texts.items() for frag in _key_fragments(key) if frag in text]


def test_no_fragment_of_the_key_leaks_when_an_echoing_body_is_cut_inside_it(server, tmp_path, caplog, capsys):
    """A server that echoes the Authorization header into its body, placed so that the client's cut of that body
    (300 characters in a retry warning and the final error after retries, 500 in a non-retryable error) falls
    inside the key, after each of 1..len(key) of its characters; and 200s with such garbage, and servers that echo
    only a prefix of the header. No substring of the key of 8 or more characters may reach a log record (any logger,
    DEBUG), a warning, stdout/stderr, an exception (message, repr, traceback) or a cache file."""
    import warnings

    key = "sk-test-" + secrets.token_urlsafe(22)  # mixed case and '-_': no chance match with hex ids in the cache
    assert len(key) >= 30
    bearer = len("Bearer ")
    cases = []  # (tag, Reply)
    for j in range(1, len(key) + 1):  # j characters of the key before the cut
        for status in (429, 500, 503):
            cases.append((f"retry-{status}-{j}", Reply(status=status, echo_auth_at=300 - bearer - j)))
        for status in (400, 401, 404, 422):
            cases.append((f"fatal-{status}-{j}", Reply(status=status, echo_auth_at=500 - bearer - j)))
        cases.append((f"garbage-{j}", Reply(status=200, echo_auth_at=300 - bearer - j)))
    for n in range(bearer + 8, bearer + len(key)):  # the server itself echoes only the header's first n characters
        cases.append((f"prefix-500-{n}", Reply(status=500, echo_auth_at=40, echo_auth_chars=n)))
        cases.append((f"prefix-400-{n}", Reply(status=400, echo_auth_at=40, echo_auth_chars=n)))
        cases.append((f"prefix-tail-{n}", Reply(status=400, echo_auth_at=500 - n, echo_auth_chars=n, echo_auth_tail=0)))
    replies = dict(cases)
    server.rule = lambda content, n: replies.get(content, Reply())
    caplog.set_level(logging.DEBUG)  # the root logger: every logger's records, httpx and httpcore included
    cache = tmp_path / "cache"
    errors = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with JudgeClient("judge-test", base_url=server.url, api_key=key, cache_dir=cache, max_retries=1,
                         timeout=2.0, backoff_base=0.0, backoff_max=0.0) as client:
            for tag, _ in cases:
                with pytest.raises(JudgeError) as info:
                    client.complete([{"role": "user", "content": tag}])
                errors.append(info.value)
            assert client.complete([{"role": "user", "content": "fine"}])["content"]  # the cache gets an entry
            with pytest.raises(JudgeError) as info:  # and through the thread pool
                client.complete_many([{"messages": [{"role": "user", "content": tag}]} for tag, _ in cases[:8]],
                                     workers=4, progress=False)
            errors.append(info.value)

    # The key reached the server on every request, and the server did echo it (so the scrub is exercised).
    assert all(r["headers"]["Authorization"] == f"Bearer {key}" for r in server.requests)
    retried = sum(tag.startswith(("retry", "garbage", "prefix-500")) for tag, _ in cases)
    assert len(server.requests) >= 2 * retried + (len(cases) - retried) + 1
    warned = [r for r in caplog.records if "retry 1/1" in r.getMessage()]
    assert len(warned) >= retried
    assert any("[REDACTED]" in str(e) for e in errors)

    texts = {"caplog.text": caplog.text, "stdout": "", "stderr": ""}
    out, err = capsys.readouterr()
    texts["stdout"], texts["stderr"] = out, err
    for i, record in enumerate(caplog.records):
        texts[f"record {i} ({record.name})"] = f"{record.getMessage()} {record.msg!r} {record.args!r}"
    for i, w in enumerate(caught):
        texts[f"warning {i}"] = str(w.message)
    for tag_e, e in zip([t for t, _ in cases] + ["complete_many"], errors):
        texts[f"exception {tag_e}"] = f"{e} {e!r} {''.join(traceback.format_exception(e))}"
    files = cache_files(cache)
    assert files
    for f in files:
        texts[f"cache {f.name}"] = f.read_text()
    leaks = _leaked(key, texts)
    assert not leaks, f"{len(leaks)} leaks, e.g. {leaks[:5]}"


def test_redaction_scrubs_the_key_its_prefixes_and_bearer_tokens():
    from prefopt.judges.client import redact

    key = "sk-test-" + secrets.token_urlsafe(22)
    for text in (key, f"Bearer {key}", f"x{key}y", f"...{key[:8]}", f"{key[:20]}…", f"a {key[3:15]} b",
                 json.dumps({"authorization": f"Bearer {key}"}), f"{key}{key[:9]}"):
        out = redact(text, key)
        assert not _leaked(key, {"out": out}), (text, out)
        assert "[REDACTED]" in out
    assert redact("seven77 and nothing else", key) == "seven77 and nothing else"
    assert redact(f"{key[:7]}!", key) == f"{key[:7]}!"  # shorter fragments carry too little to scrub
    assert redact("Authorization: Bearer someone-elses-token-123", None) == "Authorization: Bearer [REDACTED]"
    assert redact("no key here", None) == "no key here"


def test_a_key_that_cannot_be_sent_in_a_header_is_refused_without_being_shown():
    from prefopt.errors import ConfigError

    for bad in ("sk-line\nbreak-123456", "sk-accent-é-123456", "sk space 1234567"):
        with pytest.raises(ConfigError) as info:
            JudgeClient("judge-test", api_key=bad, use_cache=False)
        assert bad not in str(info.value) and "123456" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Batches: order, concurrency, resume
# ---------------------------------------------------------------------------------------------------------------


def test_judge_many_keeps_input_order_with_several_workers(server, tmp_path):
    n = 12
    # Later items answer sooner, so the completion order differs from the input order.
    server.rule = lambda content, k: Reply(delay=0.02 * (n - int(re.search(r"item (\d+)", content).group(1))))
    triples = []
    for i in range(n):  # the expected verdict cycles A, B, tie
        a, b = [("long response", "short"), ("short", "long response"), ("same", "same")][i % 3]
        triples.append((hh_prompt(f"item {i}"), a, b))
    with make_client(server, tmp_path / "cache") as client:
        verdicts = judge_many(PairwiseLLMJudge(client, HH), triples, workers=4, progress=True)
    assert verdicts == ["A", "B", "tie"] * (n // 3)
    assert server.max_inflight > 1  # really concurrent
    finished = [int(re.search(r"item (\d+)", c).group(1)) for c in server.finished]
    assert finished != sorted(finished)  # and really out of order

    # Duplicates in one batch are paid once: the second asker waits for the first and reads its entry.
    server.rule = lambda content, k: Reply(delay=0.05)
    before = server.count()
    dup = [(hh_prompt("dup"), "longer one", "short")] * 8
    with make_client(server, tmp_path / "cache") as client:
        assert judge_many(PairwiseLLMJudge(client, HH), dup, workers=8, progress=False) == ["A"] * 8
    assert server.count() == before + 1


def test_an_interrupted_batch_resumes_without_paying_again(server, tmp_path):
    cache = tmp_path / "cache"
    server.rule = lambda c, n: Reply(status=500) if "q-broken" in c else Reply()
    tags = ["q-one", "q-two", "q-broken", "q-four", "q-five", "q-six"]
    triples = [(hh_prompt(t), f"response for {t}, longer", "short") for t in tags]
    with make_client(server, cache, max_retries=2) as client:
        with pytest.raises(JudgeError, match=r"1 of 6 judge calls failed.*item 2"):
            judge_many(PairwiseLLMJudge(client, HH), triples, workers=3, progress=False)
    assert {t: server.count(t) for t in tags} == {t: 3 if t == "q-broken" else 1 for t in tags}
    assert len(cache_files(cache)) == 5  # every call that finished was cached

    server.rule = lambda c, n: Reply()  # the endpoint recovers
    with make_client(server, cache, max_retries=2) as client:
        assert judge_many(PairwiseLLMJudge(client, HH), triples, workers=3, progress=False) == ["A"] * 6
    assert {t: server.count(t) for t in tags} == {t: 4 if t == "q-broken" else 1 for t in tags}

    # complete_many: the same contract one level down, results in input order.
    reqs = [{"messages": [{"role": "user", "content": f"raw {i}"}], "max_tokens": 3} for i in range(5)]
    server.rule = lambda c, n: Reply(content=c.upper(), delay=0.01 * (5 - int(c.split()[1])))
    with make_client(server, cache) as client:
        outs = client.complete_many(reqs, workers=5, progress=False)
    assert [o["content"] for o in outs] == [f"RAW {i}" for i in range(5)]


# ---------------------------------------------------------------------------------------------------------------
# With prefopt.winrate: the numbers come out right
# ---------------------------------------------------------------------------------------------------------------


def test_win_rate_from_a_rule_based_judge_server_matches_an_independent_count(server, tmp_path):
    # Policy vs. baseline responses: by length, the policy wins 5 pairs, loses 3, ties 2; plus one pair whose answer
    # the server garbles in both orders.
    pairs = []
    for i in range(5):
        pairs.append((hh_prompt(f"p{i}"), f"policy answer {i} with extra detail", f"base {i}"))
    for i in range(5, 8):
        pairs.append((hh_prompt(f"p{i}"), f"pol {i}", f"baseline answer {i} that is longer"))
    for i in range(8, 10):
        pairs.append((hh_prompt(f"p{i}"), f"same {i}", f"SAME {i}"))
    pairs.append((hh_prompt("p-garbled"), "policy answer that is long", "base"))
    server.rule = lambda c, n: Reply(content="Preferred: maybe") if "p-garbled" in c else Reply()

    # Independent expectation, from the strings themselves: each pair is judged twice.
    wins = 2 * sum(len(p) > len(b) for pr, p, b in pairs if "garbled" not in pr)
    losses = 2 * sum(len(p) < len(b) for pr, p, b in pairs if "garbled" not in pr)
    ties = 2 * sum(len(p) == len(b) for pr, p, b in pairs if "garbled" not in pr)
    n = 2 * len(pairs)
    assert (wins, losses, ties, n) == (10, 6, 4, 22)

    with make_client(server, tmp_path / "cache") as client:
        judge = PairwiseLLMJudge(client, HH)
        sequential = [judge_both_orders(judge, *pair) for pair in pairs]
    assert server.count() == n
    result = win_rate(sequential, bootstrap=200)
    assert (result.wins, result.losses, result.ties, result.invalid, result.n) == (wins, losses, ties, 2, n)
    assert result.win_rate == pytest.approx((wins + 0.5 * ties) / n)
    assert result.official_win_rate == pytest.approx(wins / n)
    assert result.ci[0] <= result.win_rate <= result.ci[1]

    # The concurrent version gives the same outcomes pair by pair, all from the cache.
    with make_client(server, tmp_path / "cache") as client:
        concurrent = judge_both_orders_many(PairwiseLLMJudge(client, HH), pairs, workers=4, progress=False)
    assert concurrent == sequential and server.count() == n

    # The TL;DR template through the same path (the server reads the summaries back out of its layout).
    with make_client(server, tmp_path / "cache") as client:
        tldr = PairwiseLLMJudge(client, TLDR)
        assert tldr.name == "judge-test/tldr_summary"
        post = "SUBREDDIT: r/test\nTITLE: t\nPOST: a post\nTL;DR:"
        assert judge_both_orders(tldr, post, " a fuller summary", " short") == ["win", "win"]


def test_same_interface_as_the_small_worlds_judge(server, tmp_path):
    """judge_many / judge_both_orders_many serve HiddenRewardJudge (SPEC §8); the LLM judge takes chat prompts."""
    world = SmallWorld()
    prompts = [p["prompt"] for p in world.prompts(6, seed=3)]
    rng = random.Random(0)
    pairs = [(p, world.base_response(p, rng), world.base_response(p, rng)) for p in prompts]
    hidden = HiddenRewardJudge(world)
    assert judge_both_orders_many(hidden, pairs, workers=3, progress=False) == [
        judge_both_orders(hidden, *pair) for pair in pairs
    ]
    with make_client(server, tmp_path / "cache") as client:
        llm = PairwiseLLMJudge(client, HH)
        verdicts = judge_many(llm, pairs, workers=3, progress=False)
    assert len(verdicts) == 6 and set(verdicts) <= {"A", "B", "tie"}
    sent = server.requests[0]["content"]
    assert any(f"Human: {p[0]['content']}" in sent for p in prompts)
