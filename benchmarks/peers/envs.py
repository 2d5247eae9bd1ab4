"""Each system's virtual environment, created by the harness when missing and reused afterwards.

Each system gets its own venv under ``benchmarks/.venvs/<name>`` (gitignored) with exactly the pinned
requirements below — jaxspo too: this checkout without its test extra, so torch (which ``transformers``
imports whenever it is installed) is not loaded and does not count in jaxspo's peak RSS; a ``.bench-requirements`` stamp
records what was installed, so a changed pin re-installs. torch is pinned exactly: this machine's local wheel index
serves a CPU build of 2.13.0 (an unpinned torch would pull the CUDA one).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

REQUIREMENTS = {
    "jaxspo": ("-e", str(REPO)),  # pyproject's own pins, no test/tpu extras
    "trl": ("trl==1.16.0", "torch==2.13.0", "transformers==5.24.0"),
    "tunix": ("google-tunix==0.1.7",),  # brings its own jax, flax, optax and transformers pins
}
STAMP = ".bench-requirements"


def venv_python(root: Path, name: str) -> Path:
    return root / name / "bin" / "python"


def ensure_venv(root: Path, name: str) -> Path:
    """The python of system ``name``'s venv, created and installed first if missing or stale."""
    folder, wanted = root / name, "\n".join(REQUIREMENTS[name])
    stamp = folder / STAMP
    if stamp.is_file() and stamp.read_text() == wanted and venv_python(root, name).exists():
        return venv_python(root, name)
    print(f"[bench] creating the {name} venv in {folder}: {' '.join(REQUIREMENTS[name])}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    with open(folder / "install.log", "w") as out:
        done = subprocess.run(
            [str(venv_python(root, name)), "-m", "pip", "install", "-q", *REQUIREMENTS[name]],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise RuntimeError(f"installing the {name} venv failed (exit {done.returncode}); see {folder / 'install.log'}")
    stamp.write_text(wanted)
    return venv_python(root, name)
