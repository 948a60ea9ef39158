"""Package data of prefopt, read with :mod:`importlib.resources` so that it works from a checkout and from a wheel.

- ``templates/``: the judge prompts, ``<name>.txt`` (:class:`prefopt.judges.JudgeTemplate`; ``templates/README.md``
  gives their format);
- ``generation/<family>.yaml``: the benchmarks' sampling settings per model family and benchmark (SPEC §6.3;
  :func:`prefopt.benchmarks.generation.load_generation_config`);
- ``chat_templates/<name>.jinja``: chat templates selectable by name in ``model.chat_template``
  (:data:`prefopt.models.CHAT_TEMPLATES`: ``mistral_fixed``, ``gemma2_merged_system``; SPEC §6.2-§6.4).
"""
