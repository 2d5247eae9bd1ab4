"""``jaxspo launch``: start ``jaxspo train CONFIG [key=value ...]`` as every process of a multi-host run.

One target per invocation:

- ``--local N``: N processes on this machine, each with ``--devices-per-process`` virtual CPU devices
  and gloo collectives; coordinator on 127.0.0.1 (a free port). Multi-host without a pod.
- ``--tpu NAME --zone Z``: every worker of a TPU VM pod slice (``gcloud compute tpus tpu-vm ssh
  --worker=all``); ``--queued-resource NAME --zone Z``: every worker of every node of a queued resource.
  Workers find each other through JAX's TPU detection (``JAXSPO_DISTRIBUTED=auto``).
- ``--slurm``: one ``srun`` step (run it inside an allocation, e.g. ``sbatch launch/slurm.sbatch``);
  processes find each other from the SLURM variables.
- ``--hosts h0,h1,...`` or ``--hostfile FILE``: one ``ssh`` per host with explicit
  ``JAXSPO_COORDINATOR`` (h0), ``JAXSPO_NUM_PROCESSES`` and ``JAXSPO_PROCESS_ID``.

``--dry-run`` prints the exact commands, one per line, instead of running them. Commands run from here
(local, hosts, and the single gcloud / srun command) have their output forwarded, prefixed by the
process label when there are several; the launcher waits for all and returns the exit status of the
first process that failed (the others are then stopped), or 0.

This module only builds and runs commands; it never imports JAX.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from jaxspo.cli_arguments import DEFAULT_PORT
from jaxspo.errors import DistributedError

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
TARGETS = ("local", "tpu", "queued_resource", "slurm", "hosts", "hostfile")
# Options that only mean something for some targets: option dest -> those targets.
OPTION_TARGETS = {
    "devices_per_process": ("local",),
    "zone": ("tpu", "queued_resource"),
    "project": ("tpu", "queued_resource"),
    "nodes": ("slurm",),
    "ntasks_per_node": ("slurm",),
    "workdir": ("tpu", "queued_resource", "slurm", "hosts", "hostfile"),
    "jaxspo": ("tpu", "queued_resource", "slurm", "hosts", "hostfile"),
    "port": ("local", "slurm", "hosts", "hostfile"),
}


@dataclasses.dataclass
class Command:
    """One process to start from here: ``argv`` with ``env`` added to this process's environment."""

    argv: list[str]
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    label: str = ""  # prefixes each forwarded output line, e.g. "[1] "

    def shell(self) -> str:
        """The command as one POSIX shell line: ``KEY=value ... argv``."""
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in self.env.items()] + [shlex.join(self.argv)])


def _target(args: argparse.Namespace) -> str:
    target = next(t for t in TARGETS if getattr(args, t) is not None)
    for option, targets in OPTION_TARGETS.items():
        if getattr(args, option) is not None and target not in targets:
            flag = "--" + option.replace("_", "-")
            raise DistributedError(
                f"{flag} applies to {' / '.join('--' + t.replace('_', '-') for t in targets)}, not "
                f"--{target.replace('_', '-')}"
            )
    return target


def _env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise DistributedError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def _with_device_count(xla_flags: str, count: int) -> str:
    """``xla_flags`` with its host-platform device count (if any) replaced by ``count``."""
    kept = [flag for flag in xla_flags.split() if not flag.startswith(DEVICE_COUNT_FLAG + "=")]
    return " ".join(kept + [f"{DEVICE_COUNT_FLAG}={count}"])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _hosts(args: argparse.Namespace) -> list[str]:
    if args.hostfile:
        try:
            lines = Path(args.hostfile).read_text().splitlines()
        except OSError as err:
            raise DistributedError(f"--hostfile {args.hostfile}: {err.strerror}") from None
        hosts = [line.split("#")[0].strip() for line in lines]
    else:
        hosts = [h.strip() for h in args.hosts.split(",")]
    hosts = [h for h in hosts if h]
    if not hosts:
        raise DistributedError(f"--{'hostfile' if args.hostfile else 'hosts'}: no hosts given")
    return hosts


def _remote_line(env: dict[str, str], argv: list[str], workdir: str | None) -> str:
    """The shell line run on a remote host: optional ``cd WORKDIR &&``, then ``KEY=value ... argv``."""
    line = Command(argv, env).shell()
    return f"cd {shlex.quote(workdir)} && {line}" if workdir else line


def local_commands(args: argparse.Namespace, train: list[str], extra: dict[str, str]) -> list[Command]:
    """N ``python -m jaxspo train`` processes on 127.0.0.1, each with its own CPU device count."""
    n, devices = args.local, args.devices_per_process or 1
    if n < 1 or devices < 1:
        raise DistributedError(f"--local {n} --devices-per-process {devices}: both must be at least 1")
    port = args.port or free_port()
    xla_flags = _with_device_count(extra.get("XLA_FLAGS", os.environ.get("XLA_FLAGS", "")), devices)
    argv = [sys.executable, "-m", "jaxspo", *train]
    commands = []
    for i in range(n):
        env = {"JAXSPO_COORDINATOR": f"127.0.0.1:{port}", "JAXSPO_NUM_PROCESSES": str(n), "JAXSPO_PROCESS_ID": str(i)}
        env |= {"JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"} | extra | {"XLA_FLAGS": xla_flags}
        commands.append(Command(argv, env, label=str(i)))
    return commands


def tpu_commands(args: argparse.Namespace, train: list[str], extra: dict[str, str]) -> list[Command]:
    """One gcloud ssh that runs the same line on every worker (JAX finds the others from TPU metadata)."""
    if not args.zone:
        raise DistributedError(f"--{'tpu' if args.tpu else 'queued-resource'} needs --zone")
    line = _remote_line(
        {"JAXSPO_DISTRIBUTED": "auto"} | extra, [*shlex.split(args.jaxspo or "jaxspo"), *train], args.workdir
    )
    project = ["--project", args.project] if args.project else []
    if args.tpu:
        argv = [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            args.tpu,
            "--zone",
            args.zone,
            *project,
            "--worker=all",
            "--command",
            line,
        ]
    else:
        argv = [
            "gcloud",
            "compute",
            "tpus",
            "queued-resources",
            "ssh",
            args.queued_resource,
            "--zone",
            args.zone,
            *project,
            "--node=all",
            "--worker=all",
            "--command",
            line,
        ]
    return [Command(argv)]


def slurm_commands(args: argparse.Namespace, train: list[str], extra: dict[str, str]) -> list[Command]:
    """One ``srun`` step; each task joins from its SLURM variables (one task per GPU by default)."""
    env = extra | ({"JAX_COORDINATOR_PORT": str(args.port)} if args.port else {})
    argv = ["srun", "--label", "--kill-on-bad-exit=1"]
    argv += [f"--nodes={args.nodes}"] if args.nodes else []
    argv += [f"--ntasks-per-node={args.ntasks_per_node}"] if args.ntasks_per_node else []
    argv += [f"--chdir={args.workdir}"] if args.workdir else []
    argv += ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
    return [Command(argv + [*shlex.split(args.jaxspo or "jaxspo"), *train])]


def host_commands(args: argparse.Namespace, train: list[str], extra: dict[str, str]) -> list[Command]:
    """One ssh per host; the first host runs process 0 and the coordinator."""
    hosts = _hosts(args)
    coordinator = f"{hosts[0].rpartition('@')[2]}:{args.port or DEFAULT_PORT}"
    program = [*shlex.split(args.jaxspo or "jaxspo"), *train]
    commands = []
    for i, host in enumerate(hosts):
        env = {
            "JAXSPO_COORDINATOR": coordinator,
            "JAXSPO_NUM_PROCESSES": str(len(hosts)),
            "JAXSPO_PROCESS_ID": str(i),
        } | extra
        commands.append(
            Command(["ssh", "-o", "BatchMode=yes", host, _remote_line(env, program, args.workdir)], label=host)
        )
    return commands


BUILDERS = {
    "local": local_commands,
    "tpu": tpu_commands,
    "queued_resource": tpu_commands,
    "slurm": slurm_commands,
    "hosts": host_commands,
    "hostfile": host_commands,
}


def build_commands(args: argparse.Namespace) -> list[Command]:
    """The commands ``jaxspo launch`` runs (or prints with ``--dry-run``) for parsed ``args``."""
    target = _target(args)
    train = ["train", args.config, *args.overrides]
    return BUILDERS[target](args, train, _env_pairs(args.env))


def _forward(stream: IO[bytes], prefix: str, lock: threading.Lock) -> None:
    """Copies ``stream`` to stdout line by line, each line prefixed."""
    for line in iter(stream.readline, b""):
        with lock:
            sys.stdout.write(prefix + line.decode(errors="replace"))
            sys.stdout.flush()


def _status(code: int) -> int:
    """A process exit status as a shell reports it (killed by signal s: 128 + s)."""
    return 128 - code if code < 0 else code


def run(commands: Sequence[Command], stop_grace: float = 10.0) -> int:
    """Starts all ``commands``, forwards their output, waits for all; the first failure's status, or 0.

    When one process fails the others cannot go on (their collectives would wait for it), so they get
    SIGTERM and, after ``stop_grace`` seconds, SIGKILL. SIGINT/SIGTERM sent to the launcher are passed
    on to every process (which then checkpoint and exit, as a single-process run does).
    """
    lock = threading.Lock()
    procs = [
        subprocess.Popen(
            c.argv,
            env={**os.environ, **c.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for c in commands
    ]
    prefixes = [f"[{c.label}] " if c.label and len(commands) > 1 else "" for c in commands]
    threads = [
        threading.Thread(target=_forward, args=(p.stdout, prefix, lock), daemon=True)
        for p, prefix in zip(procs, prefixes)
    ]
    for thread in threads:
        thread.start()

    def pass_on(signum: int, frame: FrameType | None) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = (
        {s: signal.signal(s, pass_on) for s in (signal.SIGINT, signal.SIGTERM)}
        if threading.current_thread() is threading.main_thread()
        else {}
    )
    failed: int | None = None
    kill_at = float("inf")
    try:
        while None in (codes := [p.poll() for p in procs]) or failed is None:
            if failed is None:
                failed = next((_status(code) for code in codes if code not in (None, 0)), None if None in codes else 0)
                if failed:
                    pass_on(signal.SIGTERM, None)
                    kill_at = time.monotonic() + stop_grace
            if time.monotonic() > kill_at:
                pass_on(signal.SIGKILL, None)
            time.sleep(0.1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for thread in threads:
        thread.join()
    return failed


def launch(args: argparse.Namespace) -> int:
    """``jaxspo launch``: prints (``--dry-run``) or runs the commands; returns the exit status."""
    commands = build_commands(args)
    if args.dry_run:
        for command in commands:
            print(command.shell())
        return 0
    return run(commands)
