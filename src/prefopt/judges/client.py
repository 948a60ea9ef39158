"""The one OpenAI-compatible judge client, with an on-disk cache and our own retries (SPEC §7 "Judges").

SPEC §7: every judge call goes through one OpenAI-compatible client (base URL + model name + key from the environment),
so GPT-4, a local vLLM server or any compatible endpoint works; judgements are cached on disk keyed by (judge, prompt
template, inputs), retried with back-off, and a rerun never pays twice.

Configuration (explicit arguments win over the environment):

- ``PREFOPT_JUDGE_BASE_URL``: the endpoint's base URL, default ``https://api.openai.com/v1``; requests go to
  ``{base_url}/chat/completions``;
- ``PREFOPT_JUDGE_MODEL``: the model name (required, by argument or environment);
- ``PREFOPT_JUDGE_API_KEY``, falling back to ``OPENAI_API_KEY``: sent as ``Authorization: Bearer …``; a local server
  may need none (no header is sent then);
- ``PREFOPT_JUDGE_CACHE``: the cache directory, default ``~/.cache/prefopt/judge``.

The key lives in one private attribute and in the request header; it is never written to a cache entry, a log record
or an exception message. Every message the client builds (log records, warnings, exceptions) goes through one
function, :func:`redact`, *before* any cut to length: it replaces the whole key, every fragment of it of
:data:`MIN_SECRET_FRAGMENT` characters or more (a server or proxy may echo a truncated header) and any
``Bearer <token>``, in case the server echoes the Authorization header. A key that cannot be sent in a header
(whitespace, control or non-ASCII characters) is refused up front with a :class:`~prefopt.errors.ConfigError` that
does not show it.

Cache format: one JSON file per entry, ``{cache_dir}/{key[:2]}/{key}.json``, written atomically (temp file in the same
directory + ``os.replace``). ``key`` is the sha256 of the canonical JSON (sorted keys, compact separators, UTF-8) of
the entry's ``request`` object: ``{"cache_version", "model", "template", "template_sha256", "messages",
"temperature", "max_tokens", "logprobs", "top_logprobs", "extra"}``. The base URL is not part of it (the same model
behind another URL is the same judge). An entry holds ``key``, ``request`` (what was asked), ``response``
(``content``, ``logprobs``, ``finish_reason``, ``model`` as reported by the server, ``id``, ``usage``) and
``created`` (Unix time and ISO 8601 UTC); never the key or any header. The raw answer is cached, not the parsed
verdict, so an unparseable answer is cached too and is re-parsed (never re-asked) on a rerun.

Retries are ours (the transport never retries): timeouts, connection errors, HTTP 408, 429 and 5xx, and a 2xx body
that is not a chat-completions JSON object are retried up to ``max_retries`` times with exponential back-off and
jitter, ``min(backoff_max, backoff_base * 2**attempt) * U(0.5, 1)``; a ``retry-after-ms`` or ``Retry-After``
(seconds or HTTP date) header replaces that delay (capped at ``retry_after_max``). Any other non-2xx status, and an
httpx error that is not a transport failure (an invalid URL, a decoding error), raises
:class:`~prefopt.errors.JudgeError` at once. Error bodies are quoted scrubbed, then cut: 300 characters in a retry
warning and the final error after retries, 500 in a non-retryable error.

:func:`_run_pool`, the thread pool behind :meth:`JudgeClient.complete_many`, also serves
:func:`prefopt.judges.pairwise.judge_many` and Arena-Hard's judge; it lives here so that the client needs nothing
from the pairwise protocol.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import urllib.parse
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from prefopt.errors import ConfigError, JudgeError

logger = logging.getLogger(__name__)

ENV_BASE_URL = "PREFOPT_JUDGE_BASE_URL"
ENV_MODEL = "PREFOPT_JUDGE_MODEL"
ENV_API_KEY = "PREFOPT_JUDGE_API_KEY"
ENV_FALLBACK_API_KEY = "OPENAI_API_KEY"
ENV_CACHE = "PREFOPT_JUDGE_CACHE"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CACHE_DIR = Path("~/.cache/prefopt/judge")
CACHE_VERSION = 1

_RETRY_STATUS = frozenset({408, 429})
_REDACTED = "[REDACTED]"
#: The shortest fragment of the key that :func:`redact` scrubs (shorter ones carry too little of it to matter, and
#: scrubbing them would mangle ordinary text).
MIN_SECRET_FRAGMENT = 8
#: Text longer than this is cut here before it is scrubbed (then scrubbed, then cut to the message's own length), so a
#: huge error body costs no more than this to scrub.
_REDACT_SCAN_MAX = 65536
_BEARER = re.compile(r"(?i)\b(bearer\s+)(?!\[REDACTED\])[A-Za-z0-9._~+/=:-]{8,}")
_HEADER_SAFE_KEY = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no whitespace: what a Bearer header can carry


def _secret_forms(secret: str) -> list[str]:
    """The key as a server might echo it: as is, JSON-escaped, URL-encoded (distinct forms only)."""
    forms = [secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)]
    return list(dict.fromkeys(forms))


def _scrub_fragments(text: str, secret: str, shortest: int) -> str:
    """``text`` with every run of ``shortest`` or more characters that is a substring of ``secret`` replaced."""
    if len(secret) < shortest:
        return text
    windows = {secret[i:i + shortest] for i in range(len(secret) - shortest + 1)}
    out: list[str] = []
    i = start = 0
    n = len(text)
    while i <= n - shortest:
        if text[i:i + shortest] in windows:
            end = i + shortest
            while end < n and text[i:end + 1] in secret:  # the longest fragment starting here
                end += 1
            out.append(text[start:i])
            out.append(_REDACTED)
            i = start = end
        else:
            i += 1
    out.append(text[start:])
    return "".join(out)


def redact(text: Any, secret: str | None, limit: int | None = None) -> str:
    """``str(text)`` scrubbed of ``secret``, then cut to ``limit`` characters (scrub first: a cut must never leave
    a piece of the key behind). Scrubbed: every form of the key (:func:`_secret_forms`), every fragment of one of
    them of :data:`MIN_SECRET_FRAGMENT` characters or more (a truncated echo), and any ``Bearer <token>``. A key
    shorter than that minimum is still replaced wherever it occurs whole. The one redaction function of the client:
    every log record, warning and exception message it produces goes through it."""
    text = str(text)
    if len(text) > _REDACT_SCAN_MAX:
        text = text[:_REDACT_SCAN_MAX]
    if secret:
        for form in _secret_forms(secret):
            text = text.replace(form, _REDACTED)
            text = _scrub_fragments(text, form, MIN_SECRET_FRAGMENT)
    text = _BEARER.sub(lambda m: m.group(1) + _REDACTED, text)
    if limit is not None and len(text) > limit:
        text = text[:limit]
    return text


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def cache_key(request: Mapping[str, Any]) -> str:
    """The cache key of a request object (see the module docstring): sha256 of its canonical JSON."""
    return hashlib.sha256(_canonical_json(request).encode("utf-8")).hexdigest()


class JudgeClient:
    """The one OpenAI-compatible chat-completions client for every judge in the project (SPEC §7).

    ``model``, ``base_url`` and ``api_key`` default to the environment (see the module docstring); ``cache_dir``
    defaults to ``$PREFOPT_JUDGE_CACHE`` or ``~/.cache/prefopt/judge``; ``use_cache=False`` turns the cache off.
    ``timeout`` is the per-request network timeout in seconds; ``max_retries`` counts retries after the first try.
    Thread-safe: :meth:`complete_many` and :func:`judge_many` call it from a thread pool.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        max_retries: int = 6,
        timeout: float = 60.0,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        retry_after_max: float = 120.0,
    ):
        import httpx  # the eval extra (it comes with the openai package); not needed to import prefopt

        self.model = model or _env(ENV_MODEL)
        if not self.model:
            raise ConfigError(f"no judge model: set {ENV_MODEL} or pass --model (model=... in Python)")
        self.base_url = (base_url or _env(ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")
        if api_key is not None:
            key, key_source = api_key, "the api_key argument"
        elif _env(ENV_API_KEY):
            key, key_source = _env(ENV_API_KEY), ENV_API_KEY
        else:
            key, key_source = _env(ENV_FALLBACK_API_KEY), ENV_FALLBACK_API_KEY
        if key and not _HEADER_SAFE_KEY.fullmatch(key):
            raise ConfigError(
                f"the judge API key from {key_source} contains whitespace, control or non-ASCII characters and "
                "cannot be sent in an Authorization header; check for a stray newline or quote (the key is not shown)"
            )
        self.__api_key = key or None
        self.cache_dir = Path(cache_dir or _env(ENV_CACHE) or DEFAULT_CACHE_DIR).expanduser() if use_cache else None
        if max_retries < 0 or timeout <= 0 or backoff_base < 0 or backoff_max < 0 or retry_after_max < 0:
            raise ValueError("max_retries, backoff_base, backoff_max, retry_after_max must be >= 0 and timeout > 0")
        self.max_retries, self.timeout = int(max_retries), float(timeout)
        self.backoff_base, self.backoff_max, self.retry_after_max = backoff_base, backoff_max, retry_after_max
        self._httpx = httpx
        self._http = httpx.Client(timeout=httpx.Timeout(self.timeout), follow_redirects=False)
        self._key_locks: dict[str, threading.Lock] = {}
        self._key_locks_guard = threading.Lock()

    # -- plumbing ----------------------------------------------------------------------------------------------

    @property
    def has_api_key(self) -> bool:
        return self.__api_key is not None

    def __repr__(self) -> str:
        return (
            f"JudgeClient(model={self.model!r}, base_url={self.base_url!r}, cache_dir={str(self.cache_dir)!r}, "
            f"api_key={'set' if self.has_api_key else 'none'})"
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "JudgeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _redact(self, text: Any, limit: int | None = None) -> str:
        """:func:`redact` with this client's key: scrub, then cut to ``limit``."""
        return redact(text, self.__api_key, limit)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.__api_key:
            headers["Authorization"] = f"Bearer {self.__api_key}"
        return headers

    def _lock_for(self, key: str) -> threading.Lock:
        with self._key_locks_guard:
            return self._key_locks.setdefault(key, threading.Lock())

    # -- cache -------------------------------------------------------------------------------------------------

    def cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def _cache_read(self, key: str) -> dict | None:
        path = self.cache_path(key)
        if path is None or not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry.get("key") != key or "content" not in entry.get("response", {}):
                raise ValueError("not a judge cache entry for this key")
        except (OSError, ValueError) as exc:
            logger.warning("%s", self._redact(f"ignoring unreadable judge cache entry {path} ({exc})"))
            return None
        return entry

    def _cache_write(self, key: str, request: dict, response: dict) -> None:
        path = self.cache_path(key)
        if path is None:
            return
        now = time.time()
        entry = {
            "key": key,
            "request": request,
            "response": response,
            "created": now,
            "created_utc": datetime.fromtimestamp(now, tz=timezone.utc).isoformat(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(entry, fh, ensure_ascii=False, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    # -- the call ----------------------------------------------------------------------------------------------

    def request_object(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        logprobs: bool = False,
        top_logprobs: int | None = None,
        template_id: tuple[str, str] | None = None,
        **extra: Any,
    ) -> dict:
        """The cache's ``request`` object for these arguments (what :meth:`complete` keys its cache on)."""
        return {
            "cache_version": CACHE_VERSION,
            "model": self.model,
            "template": template_id[0] if template_id else None,
            "template_sha256": template_id[1] if template_id else None,
            "messages": [dict(m) for m in messages],
            "temperature": float(temperature),
            "max_tokens": int(max_tokens),
            "logprobs": bool(logprobs),
            "top_logprobs": top_logprobs,
            "extra": extra,
        }

    def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        logprobs: bool = False,
        top_logprobs: int | None = None,
        template_id: tuple[str, str] | None = None,
        **extra: Any,
    ) -> dict:
        """One chat completion, from the cache when it holds it (SPEC §7: a rerun never pays twice).

        ``template_id`` = (template name, sha256 of the template text) enters the cache key only; ``extra`` (e.g.
        ``seed``, ``stop``) is sent in the request body and enters the cache key. Returns ``{"content", "logprobs",
        "finish_reason", "model", "usage", "cached", "key"}``. Raises :class:`JudgeError` on a non-retryable status
        or when retries run out; nothing is cached then.
        """
        request = self.request_object(
            messages,
            temperature=temperature,
            max_tokens=max_tokens,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            template_id=template_id,
            **extra,
        )
        key = cache_key(request)
        # One lock per key: two threads asking the same thing pay once; the second finds the first's entry.
        with self._lock_for(key):
            entry = self._cache_read(key)
            if entry is not None:
                logger.debug("judge cache hit %s", key[:12])
                return {**entry["response"], "cached": True, "key": key}
            body: dict[str, Any] = {
                **extra,
                "model": self.model,
                "messages": request["messages"],
                "temperature": request["temperature"],
                "max_tokens": request["max_tokens"],
            }
            if logprobs:
                body["logprobs"] = True
                if top_logprobs is not None:
                    body["top_logprobs"] = int(top_logprobs)
            response = self._post_with_retries(body, key)
            self._cache_write(key, request, response)
        return {**response, "cached": False, "key": key}

    def complete_many(
        self,
        requests: Sequence[Mapping[str, Any]],
        *,
        workers: int = 8,
        progress: bool = True,
        desc: str = "judge",
    ) -> list[dict]:
        """:meth:`complete` over many requests (each a dict of its keyword arguments, ``messages`` included) in a
        thread pool. Results in input order; each is cached as soon as it returns, so a failed or interrupted
        batch resumes without paying again for what finished. If any call fails, the others still run to the end,
        then a :class:`JudgeError` reports the failures."""
        return _run_pool([lambda r=r: self.complete(**r) for r in requests], workers=workers, progress=progress,
                         desc=desc)

    def _retry_delay(self, attempt: int, headers: Mapping[str, str] | None) -> float:
        if headers is not None:
            retry_after = _parse_retry_after(headers)
            if retry_after is not None:
                return min(retry_after, self.retry_after_max)
        return min(self.backoff_max, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)

    def _post_with_retries(self, body: dict, key: str) -> dict:
        httpx = self._httpx
        url = f"{self.base_url}/chat/completions"
        last_problem = "no attempt made"
        for attempt in range(self.max_retries + 1):
            retry_headers = None
            try:
                resp = self._http.post(url, json=body, headers=self._headers())
            except httpx.TimeoutException as exc:
                last_problem = f"timeout after {self.timeout:g}s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last_problem = f"connection error ({type(exc).__name__}: {self._redact(exc, 200)})"
            except (httpx.HTTPError, httpx.InvalidURL) as exc:  # not a transport failure: retrying will not help
                raise JudgeError(self._redact(
                    f"judge endpoint {self.base_url} (model {self.model!r}): request failed, not retried "
                    f"({type(exc).__name__}: {self._redact(exc, 200)})"
                )) from None
            else:
                status = resp.status_code
                if 200 <= status < 300:
                    try:
                        return _parse_chat_completion(resp.json())
                    except ValueError as exc:  # json.JSONDecodeError is a ValueError
                        problem = self._redact(exc, 300)
                        last_problem = f"HTTP {status} with a body that is not a chat completion ({problem})"
                elif status in _RETRY_STATUS or status >= 500:
                    last_problem = f"HTTP {status}: {self._redact(resp.text, 300)!r}"
                    retry_headers = resp.headers
                else:
                    raise JudgeError(self._redact(
                        f"judge endpoint {self.base_url} (model {self.model!r}) answered HTTP {status}, not retried: "
                        f"{self._redact(resp.text, 500)!r}"
                    )) from None
            if attempt == self.max_retries:
                break
            delay = self._retry_delay(attempt, retry_headers)
            logger.warning("%s", self._redact(
                f"judge call {key[:12]} failed ({last_problem}); retry {attempt + 1}/{self.max_retries} in {delay:.3g}s"
            ))
            time.sleep(delay)
        raise JudgeError(self._redact(
            f"judge endpoint {self.base_url} (model {self.model!r}) failed {self.max_retries + 1} times; "
            f"last: {last_problem}"
        )) from None


def _parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds or an HTTP date), if given."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _parse_chat_completion(payload: Any) -> dict:
    """The fields we keep from an OpenAI chat-completions response; ValueError when it is not one."""
    if not isinstance(payload, dict):
        raise ValueError("top level is not an object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ValueError("choice without a message")
    content = message.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ValueError("message content is not a string")
    usage = payload.get("usage")
    return {
        "content": content,
        "logprobs": choices[0].get("logprobs"),
        "finish_reason": choices[0].get("finish_reason"),
        "model": payload.get("model"),
        "id": payload.get("id"),
        "usage": usage if isinstance(usage, dict) else {},
    }


def _run_pool(calls: Sequence[Callable[[], Any]], *, workers: int, progress: bool, desc: str) -> list:
    """Run zero-argument calls in a thread pool; results in input order; all run, then failures are raised."""
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError("workers must be >= 1")
    results: list[Any] = [None] * len(calls)
    failures: list[tuple[int, BaseException]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(total=len(calls), desc=desc,
                                                               disable=not progress) as bar:
        futures = {pool.submit(call): i for i, call in enumerate(calls)}
        for future in as_completed(futures):
            i = futures[future]
            exc = future.exception()
            if exc is None:
                results[i] = future.result()
            else:
                failures.append((i, exc))
            bar.update(1)
    if failures:
        failures.sort(key=lambda f: f[0])
        i, first = failures[0]
        message = (
            f"{len(failures)} of {len(calls)} judge calls failed (finished ones are cached; rerun to resume); "
            f"first failure, item {i}: {first}"
        )
        if isinstance(first, JudgeError):
            raise JudgeError(message) from None
        raise JudgeError(message) from first
    return results
