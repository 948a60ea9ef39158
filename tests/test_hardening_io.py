"""Stages that write files never overwrite their input, nor an existing output unless asked (issue "Nothing lost,
nothing stale, no secret shown", item 9): ``prefopt pref-to-rw``, ``prefopt label`` and ``prefopt tiny``.

Each refusal is a :class:`prefopt.errors.PrefoptError`, so the CLI prints one line and exits 2, and the file or
folder that was there is left as it was.
"""

from __future__ import annotations

import json

import pytest

from prefopt.cli import main as prefopt
from prefopt.errors import ConfigError, DataError

PAIR = {"prompt": "\n\nHuman: what is the capital of France ?\n\nAssistant:", "chosen": " Paris .",
        "rejected": " Lyon ."}


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(dict(PAIR, prompt_id=f"p{i}")) + "\n" for i in range(3)))
    return path


def _one_line_error(capsys, argv, command):
    assert prefopt([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"prefopt {command}: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_pref_to_rw_refuses_to_write_over_its_input(pairs, tmp_path, capsys):
    before = pairs.read_text()
    err = _one_line_error(capsys, ["pref-to-rw", pairs, pairs], "pref-to-rw")
    assert "is the input" in err
    err = _one_line_error(capsys, ["pref-to-rw", pairs, pairs, "--overwrite"], "pref-to-rw")  # never, even so
    assert "is the input" in err
    link = tmp_path / "link.jsonl"
    link.symlink_to(pairs)
    _one_line_error(capsys, ["pref-to-rw", pairs, link, "--overwrite"], "pref-to-rw")  # the same file by another name
    _one_line_error(capsys, ["pref-to-rw", pairs, tmp_path / "." / "pairs.jsonl", "--overwrite"], "pref-to-rw")
    assert pairs.read_text() == before and not (tmp_path / "pairs.jsonl.meta.json").exists()


def test_pref_to_rw_refuses_an_existing_output_unless_overwrite(pairs, tmp_path, capsys):
    out = tmp_path / "rw.jsonl"
    out.write_text("precious\n")
    err = _one_line_error(capsys, ["pref-to-rw", pairs, out], "pref-to-rw")
    assert "already exists" in err and "--overwrite" in err and out.read_text() == "precious\n"
    assert prefopt(["pref-to-rw", str(pairs), str(out), "--overwrite"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["completions"] for r in rows] == [[" Paris .", " Lyon ."]] * 3

    fresh = tmp_path / "fresh.jsonl"
    assert prefopt(["pref-to-rw", str(pairs), str(fresh)]) == 0 and fresh.is_file()


def test_pref_to_rw_guard_in_the_library(pairs, tmp_path):
    from prefopt.rm import pref_to_rw

    with pytest.raises(DataError, match="is the input"):
        pref_to_rw(str(pairs), pairs, overwrite=True)
    out = tmp_path / "rw.jsonl"
    out.write_text("x\n")
    with pytest.raises(DataError, match="already exists"):
        pref_to_rw(str(pairs), out)
    assert pref_to_rw(str(pairs), out, overwrite=True)["n_pairs"] == 3


def test_label_refuses_to_write_over_its_samples_or_an_existing_output(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"prompt": PAIR["prompt"], "completions": [" Paris .", " Lyon ."]}) + "\n")
    before = samples.read_text()
    rm = tmp_path / "no_such_rm"  # the guard comes first: no reward model is loaded for a refused command
    err = _one_line_error(capsys, ["label", rm, samples, samples], "label")
    assert "is the input" in err
    _one_line_error(capsys, ["label", rm, samples, samples, "--overwrite"], "label")
    out = tmp_path / "rw.jsonl"
    out.write_text("precious\n")
    err = _one_line_error(capsys, ["label", rm, samples, out], "label")
    assert "already exists" in err and out.read_text() == "precious\n" and samples.read_text() == before

    from prefopt.rm import label_completions

    with pytest.raises(DataError, match="is the input"):
        label_completions(rm, samples, samples, overwrite=True)


def test_tiny_refuses_a_non_empty_folder_unless_overwrite(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "pairs.jsonl").write_text("my data\n")
    err = _one_line_error(capsys, ["tiny", folder], "tiny")
    assert "not empty" in err and "--overwrite" in err
    assert (folder / "pairs.jsonl").read_text() == "my data\n" and sorted(p.name for p in folder.iterdir()) == [
        "notes.txt", "pairs.jsonl"]

    from prefopt.tiny import write_example

    with pytest.raises(ConfigError, match="not empty"):
        write_example(folder)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        write_example(a_file)

    assert prefopt(["tiny", str(folder), "--overwrite"]) == 0
    assert (folder / "notes.txt").read_text() == "my notes\n" and (folder / "dpo.yaml").is_file()
    assert (folder / "pairs.jsonl").read_text() != "my data\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prefopt(["tiny", str(empty)]) == 0 and (empty / "model").is_dir()
