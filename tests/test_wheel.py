"""The wheel ships the package data: built from this checkout, installed into a fresh virtual environment, it judges a
pair with the default packaged template from a directory outside the repository.

The wheel is built from a copy of the files the build reads (``pyproject.toml``, ``README.md``, ``LICENSE``, ``src/``)
so that the build's ``build/`` and ``*.egg-info`` folders never land in (or go stale in) the checkout. The fresh
environment is made with ``venv --without-pip``; the wheel goes in with ``.venv``'s pip (``--no-deps --target`` its
site-packages), and one ``.pth`` line puts ``.venv``'s site-packages after it for the dependencies (httpx, tqdm,
yaml, ...). A ``.pth`` line only adds a directory: the ``.pth`` files inside it, the editable install's among them,
are not processed, so the checkout's ``src/`` is not on the path, and the test asserts that the ``prefopt`` imported
is the wheel's. The judge is :class:`fake_openai.FakeOpenAI`, the session's ``fake_judge`` (tests/conftest.py),
served from this test process on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
TEMPLATES = ("README.md", "hh_helpfulness.txt", "tldr_summary.txt")
FAMILIES = ("gemma2", "llama3", "mistral", "qwen2")

SCRIPT = r"""
import json, sys
import prefopt
from prefopt.benchmarks.generation import load_generation_config
from prefopt.judges import JudgeClient, PairwiseLLMJudge
from prefopt.models import resolve_chat_template

with JudgeClient(max_retries=0, timeout=30) as client:
    judge = PairwiseLLMJudge(client, "hh_helpfulness")
    verdicts = [judge.compare("Human: How do I boil an egg?", "Put it in boiling water for eight minutes.", "Boil it."),
                judge.compare("Human: How do I boil an egg?", "Boil it.", "Put it in boiling water for eight minutes.")]
json.dump({"prefopt": prefopt.__file__, "template": str(judge.template.path), "label": judge.template.answer_label,
           "verdicts": verdicts, "llama3": load_generation_config("llama3", "alpaca_eval"),
           "mistral_fixed": resolve_chat_template("mistral_fixed"), "path": sys.path}, sys.stdout)
"""


def _copy_sources(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "src", dest / "src", ignore=ignore)
    return dest


@pytest.mark.slow  # builds a wheel and a virtual environment
def test_wheel_ships_templates_and_generation_settings_and_judges_from_outside_the_repo(tmp_path, fake_judge):
    server = fake_judge  # the session's fake judge (tests/conftest.py), reset for this test
    # Build.
    source = _copy_sources(tmp_path / "source")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, cwd=tmp_path, capture_output=True, text=True)
    (wheel,) = wheels.glob("prefopt-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for name in TEMPLATES:
        assert f"prefopt/resources/templates/{name}" in names
    for family in FAMILIES:
        assert f"prefopt/resources/generation/{family}.yaml" in names
    for name in ("mistral_fixed", "gemma2_merged_system"):
        assert f"prefopt/resources/chat_templates/{name}.jinja" in names
    assert {"prefopt/resources/__init__.py", "prefopt/judges/__init__.py", "prefopt/judges/client.py",
            "prefopt/judges/pairwise.py"} <= names
    assert "prefopt/judges.py" not in names

    # Install into a fresh environment; the dependencies come from .venv's site-packages, after the wheel's.
    env_dir = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    assert site.is_relative_to(env_dir)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)
    (site / "_prefopt_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    # Judge one pair in both orders with the default packaged template, from a directory outside the repository.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFOPT_", "PYTHON")) and k.lower() not in
           ("openai_api_key", "http_proxy", "https_proxy", "all_proxy")}
    env.update(PREFOPT_JUDGE_BASE_URL=server.url, PREFOPT_JUDGE_MODEL="judge-wheel",
               PREFOPT_JUDGE_CACHE=str(tmp_path / "cache"), NO_PROXY="127.0.0.1,localhost")
    run = subprocess.run([str(python), "-I", "-c", SCRIPT], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)

    imported = Path(out["prefopt"]).resolve()
    assert imported.is_relative_to(site.resolve()) and not imported.is_relative_to(REPO / "src"), out["prefopt"]
    assert not any(Path(p).resolve() == (REPO / "src").resolve() for p in out["path"] if p)
    packaged = site.resolve() / "prefopt" / "resources" / "templates" / "hh_helpfulness.txt"
    assert Path(out["template"]).resolve() == packaged
    assert out["label"] == "Preferred"
    # The fake judge prefers the longer reply: A first, then B once the order is swapped; both parsed.
    assert out["verdicts"] == ["A", "B"]
    assert server.count() == 2 and all("=== Reply A ===" in r["content"] for r in server.requests)
    assert out["llama3"]["temperature"] == 0.9
    assert out["mistral_fixed"] == (REPO / "src/prefopt/resources/chat_templates/mistral_fixed.jinja").read_text()
