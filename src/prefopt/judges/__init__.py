"""LLM judges behind one OpenAI-compatible client, with an on-disk cache and our own retries (SPEC §7 "Judges", §6.1
step 6).

- :mod:`prefopt.judges.client`: :class:`JudgeClient`, the one OpenAI-compatible chat-completions client, with its
  configuration from the environment, its on-disk cache and its retries (the formats are documented there);
- :mod:`prefopt.judges.pairwise`: the pairwise protocol, :class:`JudgeTemplate` (the shipped templates are package
  data, ``prefopt/resources/templates/``), :class:`PairwiseLLMJudge`, :func:`judge_many` and
  :func:`judge_both_orders_many`.

Every name is re-exported here, so ``from prefopt.judges import …`` works as before the split. A failed judge call
raises :class:`prefopt.errors.JudgeError`.
"""

from prefopt.errors import JudgeError
from prefopt.judges.client import (
    CACHE_VERSION,
    DEFAULT_BASE_URL,
    DEFAULT_CACHE_DIR,
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_CACHE,
    ENV_FALLBACK_API_KEY,
    ENV_MODEL,
    _REDACTED,
    _RETRY_STATUS,
    MIN_SECRET_FRAGMENT,
    JudgeClient,
    _canonical_json,
    _env,
    _parse_chat_completion,
    _parse_retry_after,
    _run_pool,
    cache_key,
    redact,
)
from prefopt.judges.pairwise import (
    _ROLE_NAMES,
    TEMPLATE_DIR,
    TEMPLATE_FIELDS,
    JudgeTemplate,
    PairwiseLLMJudge,
    TemplateNotFoundError,
    format_chat_prompt,
    judge_both_orders_many,
    judge_many,
    packaged_templates,
)

__all__ = [
    "CACHE_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_CACHE_DIR",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_CACHE",
    "ENV_FALLBACK_API_KEY",
    "ENV_MODEL",
    "TEMPLATE_DIR",
    "TEMPLATE_FIELDS",
    "JudgeClient",
    "JudgeError",
    "JudgeTemplate",
    "PairwiseLLMJudge",
    "TemplateNotFoundError",
    "cache_key",
    "format_chat_prompt",
    "judge_both_orders_many",
    "judge_many",
    "packaged_templates",
    "redact",
]
