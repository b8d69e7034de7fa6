"""CLI: every command has --help; user errors exit 2 with a message naming the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["scan", "generate", "train-ldm", "train-detector", "embed", "import-checkpoint", "split", "info"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0 and "usage" in capsys.readouterr().out


def test_missing_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "scan",
            "--train",
            str(tmp_path / "nope"),
            "--val",
            str(tmp_path),
            "--synthetic",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "nope: no such file or folder" in capsys.readouterr().err


def test_split_writes_patient_level_manifest(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifest.csv"
    assert main(["split", "--input", str(image_folder), "--out", str(out), "--val-fraction", "0.5"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "path,patient_id,split" and len(lines) == 4
    splits = {line.split(",")[1]: line.split(",")[2] for line in lines[1:]}
    assert sorted(splits.values()) == ["train", "val"]


def test_module_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "core", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "scan" in result.stdout
