"""LLM benchmarks of Tables 2 and 3: AlpacaEval 2, Arena-Hard v0.1, MT-Bench (SPEC §7)."""
