"""prefopt.fingerprints: what a stage's marker records about its outputs, and the check the run scripts call."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prefopt import fingerprints as fp


def test_small_files_are_hashed_in_full_and_folders_list_their_files(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "b.json").write_text("{}")
    (tmp_path / "model" / "sub").mkdir()
    (tmp_path / "model" / "sub" / "a.bin").write_bytes(b"x" * 10)
    f = fp.fingerprint(tmp_path / "model" / "b.json")
    assert f == {"size": 2, "sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
    folder = fp.fingerprint(tmp_path / "model")
    assert list(folder["files"]) == ["b.json", "sub/a.bin"]
    assert fp.fingerprint(tmp_path / "absent") is None
    assert fp.digest(folder) == fp.digest(fp.fingerprint(tmp_path / "model")) and len(fp.digest(folder)) == 16


def test_large_files_get_the_sampled_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setattr(fp, "FULL_HASH_LIMIT", 4 * fp.BLOCK)
    big = tmp_path / "big.safetensors"
    data = bytearray(b"\0" * (5 * fp.BLOCK))
    big.write_bytes(data)
    first = fp.fingerprint(big)
    assert set(first) == {"size", "sampled_sha256"}
    data[-1] = 1  # the last block: seen
    big.write_bytes(data)
    assert fp.fingerprint(big) != first
    data[-1], data[fp.BLOCK + 5] = 0, 1  # outside the three sampled blocks: not seen (the documented trade-off)
    big.write_bytes(data)
    assert fp.fingerprint(big) == first
    big.write_bytes(data[:-1])  # truncated: seen
    assert fp.fingerprint(big)["size"] == 5 * fp.BLOCK - 1


def test_record_and_verify_outputs(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "model.safetensors").write_bytes(b"w" * 100)
    (tmp_path / "pairs.jsonl").write_text("1\n2\n")
    recorded = fp.record_outputs(["final", "pairs.jsonl"], root=tmp_path)
    assert set(recorded) == {"final", "pairs.jsonl"}
    assert fp.verify_outputs(recorded, root=tmp_path) is None
    assert fp.verify_outputs(json.loads(json.dumps(recorded)), root=tmp_path) is None  # survives JSON
    (tmp_path / "final" / "model.safetensors").write_bytes(b"w" * 50)
    assert fp.verify_outputs(recorded, root=tmp_path) == "final/model.safetensors changed size: 100 -> 50 bytes"
    (tmp_path / "final" / "model.safetensors").unlink()
    assert fp.verify_outputs(recorded, root=tmp_path) == "final/model.safetensors is missing"
    assert fp.verify_outputs({}, root=tmp_path) == "no output fingerprints recorded"


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "prefopt.fingerprints", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_cli_check_detects_a_changed_output_or_input(tmp_path):
    out, model = tmp_path / "answers.jsonl", tmp_path / "model"
    out.write_text("a\nb\n")
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"1234")
    marker = tmp_path / ".done_answers.jsonl.json"
    assert cli("check", marker, cwd=tmp_path).returncode == 1  # no marker: not done
    assert cli("record", marker, out, f"--input={model}", cwd=tmp_path).returncode == 0
    assert cli("check", marker, cwd=tmp_path).returncode == 0
    out.write_text("a\n")  # the output was cut
    proc = cli("check", marker, cwd=tmp_path)
    assert proc.returncode == 1 and "answers.jsonl changed size" in proc.stderr
    out.write_text("a\nb\n")
    assert cli("check", marker, cwd=tmp_path).returncode == 0  # the same bytes again: fresh
    (model / "model.safetensors").write_bytes(b"5678")  # a retrained model: the stage that read it is stale
    proc = cli("check", marker, cwd=tmp_path)
    assert proc.returncode == 1 and "input" in proc.stderr and "model.safetensors changed content" in proc.stderr
    out.unlink()
    assert cli("record", marker, out, cwd=tmp_path).returncode == 2  # nothing to record


def test_run_scripts_done_check_uses_the_marker(tmp_path):
    """run/common.sh's done_: an existing output is skipped only with a fresh marker."""
    import shutil
    from pathlib import Path

    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "winrate.json"
    script = f'source "{root}/run/common.sh"; done_ "{out}" judge && echo SKIP || echo RUN'
    env = {"PATH": "/usr/bin:/bin", "FINGERPRINTS": f"{sys.executable} -m prefopt.fingerprints", "HOME": str(tmp_path)}

    def state():
        proc = subprocess.run([bash, "-c", script], capture_output=True, text=True, env=env, timeout=60)
        return proc.stdout.strip(), proc.stderr

    out.write_text("{}")
    assert state()[0] == "RUN"  # exists, but no marker: not trusted
    assert cli("record", tmp_path / ".done_winrate.json.json", out, cwd=tmp_path).returncode == 0
    assert state()[0] == "SKIP"
    out.write_text("{ }")
    verdict, stderr = state()
    assert verdict == "RUN" and "redo judge: output" in stderr and "winrate.json changed" in stderr
