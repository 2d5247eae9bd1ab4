"""The code passes the linter and formatter set in pyproject.toml (`make lint`): `ruff format` leaves every file as it
is, and `ruff check` finds no unused or undefined names, redefinitions, syntax errors or over-long lines."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args, str(ROOT)], capture_output=True, text=True, cwd=ROOT)


def test_ruff_check_passes():
    done = ruff("check", "--no-cache", "--output-format", "concise")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_leaves_every_file_unchanged():
    done = ruff("format", "--no-cache", "--check")
    assert done.returncode == 0, done.stdout + done.stderr
