"""What the command-line fuzz tests share: one in-process ``jaxspo`` run, its single error line, tiny runs."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import tempfile
import typing
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings

from jaxspo import cli


ERROR_LINE = re.compile(r"^jaxspo: [a-z ]*error: \S")
CONFIG_STATUS, INPUT_STATUS = 2, 1
FIXTURES = Path(__file__).parent / "fixtures"
# no shrinking: every example runs real loading code, and the first failure's inputs are printed as they are
FUZZ = settings(
    max_examples=12,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    phases=[Phase.generate],
)

# a tiny preference run (no SFT, 2 steps) on 8 CPU devices; the architecture keys are left to model.path cases
TINY_RUN = [
    "data.synthetic.num_sft=16",
    "data.synthetic.num_train=16",
    "data.synthetic.num_eval=8",
    "trainer.sft_steps=0",
    "trainer.steps=2",
    "trainer.batch_size=8",
    "eval.num_pairs=8",
    "eval.num_prompts=8",
    "eval.max_new_tokens=2",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "logging.plot=false",
    "checkpoint.save_final=false",
]
TINY_MODEL = [
    "model.hidden_size=16",
    "model.intermediate_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.num_kv_heads=1",
]


def run_cli(argv: list[str]) -> tuple[object, str]:
    """(exit status or the uncaught exception, stderr) of ``jaxspo ARGV`` run in this process."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli.main(argv)
        except SystemExit as exit_:  # argparse's own exit
            status = exit_.code
        except Exception as err:  # noqa: BLE001 - the property under test: nothing escapes main
            status = err
    return status, stderr.getvalue()


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_one_error_line(
    argv: list[str], inputs: Path, status: int, if_it_succeeds: typing.Callable[[], None] | None = None
) -> str | None:
    """Runs ``argv`` and checks the error contract; returns the error line. With ``if_it_succeeds`` the command
    may also succeed (status 0, no error line, inputs unchanged), and then that check must hold; returns None."""
    before = hashes(inputs)
    got, stderr = run_cli(argv)
    if got == 0 and if_it_succeeds is not None:
        assert hashes(inputs) == before, f"an input file changed\nargv={argv}"
        if_it_succeeds()
        return None
    assert not isinstance(got, BaseException), f"uncaught {type(got).__name__}: {got}\nargv={argv}"
    assert "Traceback" not in stderr, f"traceback for a user error\nargv={argv}\n{stderr[-3000:]}"
    lines = [line for line in stderr.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1, f"expected one error line, got {lines}\nargv={argv}\n{stderr[-3000:]}"
    assert got == status, f"status {got}, expected {status}: {lines[0]}\nargv={argv}"
    assert hashes(inputs) == before, f"an input file changed\nargv={argv}"
    return lines[0]


@contextlib.contextmanager
def workspace():
    """(inputs, outputs) folders of one example."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = Path(tmp) / "inputs", Path(tmp) / "outputs"
        inputs.mkdir()
        outputs.mkdir()
        yield inputs, outputs


def good_row(i: int) -> dict:
    return {"prompt": f"reverse {i % 10} 2 3 :", "chosen": f"3 2 {i % 10}", "rejected": f"3 {i % 10} um"}
