"""The benchmark generation settings carry SPEC §6.3's values for every model family."""

import pytest

from prefopt.benchmarks.generation import load_generation_config, temperature_for

FAMILIES = ("llama3", "gemma2", "mistral", "qwen2")


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_values(family):
    alpaca = load_generation_config(family, "alpaca_eval")
    # SPEC §6.3: Llama-3 at 0.9 with its two stop tokens; Gemma-2, Mistral, Qwen at 0.5; 4096 new tokens
    assert alpaca["temperature"] == (0.9 if family == "llama3" else 0.5) and alpaca["max_new_tokens"] == 4096
    assert alpaca["top_p"] == 1.0
    if family == "llama3":
        assert alpaca["stop_strings"] == ["<|end_of_text|>", "<|eot_id|>"]
    arena = load_generation_config(family, "arena_hard")
    assert temperature_for(arena) == 0.0 and arena["max_new_tokens"] == 4096  # SPEC §6.3: greedy, 4096 tokens
    mt = load_generation_config(family, "mt_bench")
    assert temperature_for(mt, "writing") == 0.7 and temperature_for(mt, "math") == 0.0
    assert temperature_for(mt, "stem") == 0.1


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="known model families: gemma2, llama3, mistral, qwen2"):
        load_generation_config("llama4", "alpaca_eval")
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_generation_config("llama3", "mmlu")
    with pytest.raises(ValueError, match="no MT-Bench temperature"):
        temperature_for(load_generation_config("llama3", "mt_bench"), "poetry")


def test_settings_are_package_data_found_from_any_directory(tmp_path, monkeypatch):
    from pathlib import Path

    import prefopt
    from prefopt.benchmarks.generation import GENERATION_DIR

    assert Path(str(GENERATION_DIR)) == Path(prefopt.__file__).parent / "resources" / "generation"
    monkeypatch.chdir(tmp_path)  # not the repository
    assert {p.name for p in GENERATION_DIR.iterdir()} >= {f"{family}.yaml" for family in FAMILIES}
    assert load_generation_config("qwen2", "alpaca_eval")["temperature"] == 0.5
    # A YAML path still works from anywhere, and a directory of one's own replaces the packaged one.
    (tmp_path / "mine.yaml").write_text("alpaca_eval: {temperature: 0.3}\n")
    assert load_generation_config("mine.yaml", "alpaca_eval") == {"temperature": 0.3}
    assert load_generation_config("mine", "alpaca_eval", directory=tmp_path) == {"temperature": 0.3}
    with pytest.raises(ValueError, match="known model families: mine$"):
        load_generation_config("llama3", "alpaca_eval", directory=tmp_path)
    with pytest.raises(ValueError, match="known model families: $"):
        load_generation_config("llama3", "alpaca_eval", directory=tmp_path / "none")
