"""`jaxspo launch`: the exact commands of --dry-run for every target, option checks, and the runner."""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxspo import launch
from jaxspo.cli import main

REPO = Path(__file__).resolve().parents[1]


def dry_run(capsys, *argv: str) -> list[str]:
    assert main(["launch", "--dry-run", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def test_tpu_pod_slice(capsys):
    lines = dry_run(
        capsys,
        "--tpu",
        "my-v5p-64",
        "--zone",
        "us-east5-a",
        "--project",
        "proj",
        "--workdir",
        "jaxspo",
        "--jaxspo",
        ".venv/bin/jaxspo",
        "--env",
        "LIBTPU_INIT_ARGS=--xla_tpu_enable_async_all_gather=true",
        "configs/demo.yaml",
        "trainer.steps=50",
        "run_dir=/mnt/shared/runs/a b",
    )
    assert lines == [
        "gcloud compute tpus tpu-vm ssh my-v5p-64 --zone us-east5-a --project proj --worker=all --command "
        + shlex.quote(
            "cd jaxspo && JAXSPO_DISTRIBUTED=auto LIBTPU_INIT_ARGS=--xla_tpu_enable_async_all_gather=true "
            ".venv/bin/jaxspo train configs/demo.yaml trainer.steps=50 'run_dir=/mnt/shared/runs/a b'"
        )
    ]
    remote = shlex.split(lines[0])[-1]  # what each worker's shell runs: the overrides survive both quotings
    assert shlex.split(remote)[-1] == "run_dir=/mnt/shared/runs/a b"


def test_tpu_queued_resource(capsys):
    lines = dry_run(capsys, "--queued-resource", "qr-7", "--zone", "us-central2-b", "configs/demo.yaml")
    assert lines == [
        "gcloud compute tpus queued-resources ssh qr-7 --zone us-central2-b --node=all --worker=all "
        "--command 'JAXSPO_DISTRIBUTED=auto jaxspo train configs/demo.yaml'"
    ]


def test_slurm(capsys):
    lines = dry_run(
        capsys,
        "--slurm",
        "--nodes",
        "2",
        "--ntasks-per-node",
        "8",
        "--port",
        "29500",
        "--workdir",
        "/shared/jaxspo",
        "--env",
        "NCCL_DEBUG=WARN",
        "configs/demo.yaml",
        "trainer.batch_size=256",
    )
    assert lines == [
        "srun --label --kill-on-bad-exit=1 --nodes=2 --ntasks-per-node=8 --chdir=/shared/jaxspo "
        "env NCCL_DEBUG=WARN JAX_COORDINATOR_PORT=29500 jaxspo train configs/demo.yaml trainer.batch_size=256"
    ]
    assert dry_run(capsys, "--slurm", "configs/demo.yaml") == [
        "srun --label --kill-on-bad-exit=1 jaxspo train configs/demo.yaml"
    ]


def test_host_list_and_hostfile(capsys, tmp_path):
    expected = [
        f"ssh -o BatchMode=yes {host} 'cd /nfs/jaxspo && JAXSPO_COORDINATOR=gpu-a:9000 JAXSPO_NUM_PROCESSES=2 "
        f"JAXSPO_PROCESS_ID={i} jaxspo train configs/demo.yaml'"
        for i, host in enumerate(["me@gpu-a", "gpu-b"])
    ]
    common = ["--port", "9000", "--workdir", "/nfs/jaxspo", "configs/demo.yaml"]
    assert dry_run(capsys, "--hosts", "me@gpu-a,gpu-b", *common) == expected
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the coordinator first\nme@gpu-a\n\ngpu-b  # second\n")
    assert dry_run(capsys, "--hostfile", str(hostfile), *common) == expected


def test_local(capsys, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_cpu_enable_fast_math=false")
    lines = dry_run(
        capsys, "--local", "2", "--devices-per-process", "4", "--port", "12345", "configs/demo.yaml", "trainer.steps=5"
    )
    assert lines == [
        f"JAXSPO_COORDINATOR=127.0.0.1:12345 JAXSPO_NUM_PROCESSES=2 JAXSPO_PROCESS_ID={i} JAX_PLATFORMS=cpu "
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo XLA_FLAGS='--xla_cpu_enable_fast_math=false "
        "--xla_force_host_platform_device_count=4' "
        f"{shlex.quote(sys.executable)} -m jaxspo train configs/demo.yaml trainer.steps=5"
        for i in range(2)
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--local", "2", "--zone", "z"], "--zone applies to --tpu / --queued-resource, not --local"),
        (["--tpu", "t", "--devices-per-process", "2"], "--devices-per-process applies to --local, not --tpu"),
        (["--tpu", "t"], "--tpu needs --zone"),
        (["--local", "0"], "--local 0 --devices-per-process 1: both must be at least 1"),
        (["--slurm", "--env", "NOEQUALS"], "--env 'NOEQUALS': expected KEY=VALUE"),
        (["--hosts", " , "], "--hosts: no hosts given"),
    ],
)
def test_bad_options_are_named(capsys, argv, message):
    assert main(["launch", "--dry-run", *argv, "configs/demo.yaml"]) == 1
    assert message in capsys.readouterr().err


def test_run_prefixes_output_and_stops_the_others_when_one_fails(capsys):
    python = [sys.executable, "-c"]
    commands = [
        launch.Command([*python, "import sys, time; print('hello'); time.sleep(1); sys.exit(3)"], label="0"),
        launch.Command([*python, "import time; print('waiting', flush=True); time.sleep(60)"], label="1"),
    ]
    start = time.monotonic()
    assert launch.run(commands, stop_grace=5) == 3  # the first failure's status, not the stopped process's
    assert time.monotonic() - start < 30
    out = capsys.readouterr().out
    assert "[0] hello" in out and "[1] waiting" in out
    ok = [launch.Command([*python, "print('fine')"], env={"X": "1"}, label=str(i)) for i in range(2)]
    assert launch.run(ok) == 0


@pytest.mark.parametrize(
    "script, args, env, expected",
    [
        (
            "tpu_pod.sh",
            ["my-v4-32", "us-central2-b"],
            {},
            "gcloud compute tpus tpu-vm ssh my-v4-32 --zone us-central2-b --worker=all "
            "--command 'cd jaxspo && JAXSPO_DISTRIBUTED=auto .venv/bin/jaxspo train configs/demo.yaml trainer.steps=5'",
        ),
        ("slurm.sbatch", [], {}, "srun --label --kill-on-bad-exit=1 jaxspo train configs/demo.yaml trainer.steps=5"),
    ],
)
def test_launch_scripts_wrap_jaxspo_launch(script, args, env, expected):
    bin_dir = str(Path(sys.executable).parent)  # where the jaxspo console script is installed
    done = subprocess.run(
        ["bash", str(REPO / "launch" / script), *args, "--dry-run", "configs/demo.yaml", "trainer.steps=5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ | env | {"PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [expected]


def test_hosts_script_runs_from_this_checkout(tmp_path):
    (tmp_path / "hosts").write_text("gpu-a\ngpu-b\n")
    bin_dir = str(Path(sys.executable).parent)
    done = subprocess.run(
        ["bash", str(REPO / "launch" / "hosts.sh"), str(tmp_path / "hosts"), "--dry-run", "configs/demo.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert done.stdout.splitlines() == [
        f"ssh -o BatchMode=yes gpu-{h} 'cd {REPO} && JAXSPO_COORDINATOR=gpu-a:8476 "
        f"JAXSPO_NUM_PROCESSES=2 JAXSPO_PROCESS_ID={i} "
        ".venv/bin/jaxspo train configs/demo.yaml'"
        for i, h in enumerate("ab")
    ]
    usage = subprocess.run(["bash", str(REPO / "launch" / "hosts.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "Usage: launch/hosts.sh HOSTFILE" in usage.stdout
