"""`make table1|2|3`: SCALE=paper stops with one clear message where the machine lacks a GPU, the Hub or a judge;
SCALE=small runs the same methods in the small world (the targets are checked with `make -n`, not run)."""

import subprocess
from pathlib import Path

import pytest

from prefopt.cli import main as prefopt

ROOT = Path(__file__).resolve().parents[1]


def test_preflight_names_what_is_missing_and_the_small_scale_alternative(capsys, monkeypatch):
    import torch

    monkeypatch.delenv("PREFOPT_JUDGE_MODEL", raising=False)
    code = prefopt(["preflight", "table2", "--needs", "gpu,judge"])
    err = capsys.readouterr().err
    if torch.cuda.is_available():
        assert "CUDA GPU" not in err
    else:
        assert code == 2 and "a CUDA GPU" in err
    assert "a judge endpoint (set PREFOPT_JUDGE_MODEL" in err and "make table2 SCALE=small" in err
    assert len(err.strip().splitlines()) == 1 and "Nothing was run" in err


def test_preflight_passes_when_what_is_needed_is_there(capsys, monkeypatch):
    monkeypatch.setenv("PREFOPT_JUDGE_MODEL", "some-judge")
    assert prefopt(["preflight", "table1", "--needs", "judge"]) == 0


@pytest.mark.parametrize("table, methods", [
    ("table1", "dpo,exo_pref,exo_rw,fpo_alpha_pref,fpo_alpha_rw"),  # f-PO, DPO, EXO in pref and rw settings
    ("table2", "alphapo,simpo,dpo"),
    ("table3", "gamma_simpo,simpo,dpo,gamma_dpo"),
])
def test_small_scale_targets_run_the_tables_methods_in_the_small_world(table, methods):
    from prefopt.cli import SMALL_TABLE_METHODS

    plan = subprocess.run(["make", "-n", "-o", ".venv/.installed", table, "SCALE=small"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    assert f"prefopt.cli small-table {table}" in plan and "preflight" not in plan
    assert SMALL_TABLE_METHODS[table] == methods


def test_paper_scale_targets_check_first_then_run_the_scripts():
    plan = subprocess.run(["make", "-n", "-o", ".venv/.installed", "table3"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    assert plan.index("prefopt.cli preflight table3") < plan.index("run/$e.sh")
    assert "gamma_llama3 gamma_gemma2 gamma_mistral gamma_qwen2" in plan
