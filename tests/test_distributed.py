"""Multi-process runs: the environment → jax.distributed plan, the global-batch helpers across two real
processes, training on 2 × 4 local processes equal to one process on the same mesh, and 4 × 2 processes resuming
the 2 × 4 run's checkpoint to the same result."""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxspo import distributed, launch
from jaxspo.distributed import Plan, plan_from_env
from jaxspo.errors import DistributedError
from jaxspo.sharding import make_mesh
from tests.run_overrides import TINY_MODEL_AND_DATA

REPO = Path(__file__).resolve().parents[1]


# --- the plan read from the environment ------------------------------------------------------------


def test_explicit_variables_give_the_plan():
    env = {"JAXSPO_COORDINATOR": "10.0.0.2:8476", "JAXSPO_NUM_PROCESSES": "4", "JAXSPO_PROCESS_ID": "3"}
    assert plan_from_env(env, on_tpu_vm=False) == Plan("explicit", "10.0.0.2:8476", 4, 3)
    jax_names = {"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}
    assert plan_from_env(jax_names, on_tpu_vm=False) == Plan("explicit", "h0:1234", 2, 0)


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"JAXSPO_COORDINATOR": "h0:1", "JAXSPO_NUM_PROCESSES": "2"},
            "JAXSPO_PROCESS_ID (or JAX_PROCESS_ID) is missing",
        ),
        (
            {"JAXSPO_PROCESS_ID": "1"},
            "JAXSPO_COORDINATOR (or JAX_COORDINATOR_ADDRESS) and JAXSPO_NUM_PROCESSES (or "
            "JAX_NUM_PROCESSES) is missing",
        ),
        (
            {"JAXSPO_COORDINATOR": "h0", "JAXSPO_NUM_PROCESSES": "2", "JAXSPO_PROCESS_ID": "0"},
            "JAXSPO_COORDINATOR='h0' must be host:port",
        ),
        (
            {"JAXSPO_COORDINATOR": "h0:1", "JAXSPO_NUM_PROCESSES": "two", "JAXSPO_PROCESS_ID": "0"},
            "JAXSPO_NUM_PROCESSES='two' is not an integer",
        ),
        (
            {"JAXSPO_COORDINATOR": "h0:1", "JAXSPO_NUM_PROCESSES": "2", "JAXSPO_PROCESS_ID": "2"},
            "JAXSPO_PROCESS_ID=2 must be below JAXSPO_NUM_PROCESSES=2",
        ),
        ({"JAXSPO_DISTRIBUTED": "yes"}, "JAXSPO_DISTRIBUTED='yes'"),
        (
            {"SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_ID": "7"},
            "without SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID",
        ),
    ],
)
def test_bad_environment_names_the_variable(env, message):
    with pytest.raises(DistributedError) as err:
        plan_from_env(env, on_tpu_vm=False)
    assert message in str(err.value)


def test_slurm_tpu_auto_off_and_single_process():
    slurm = {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_NODELIST": "gpu[01-02]",
        "SLURM_NTASKS": "8",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
    }
    assert plan_from_env(slurm, on_tpu_vm=False) == Plan("slurm", None, 8, 5)
    batch_script = slurm | {"SLURM_STEP_NUM_TASKS": "1"}  # sbatch's own shell, not an srun step of several tasks
    assert plan_from_env(batch_script, on_tpu_vm=False) is None
    assert plan_from_env({}, on_tpu_vm=True) == Plan("auto")
    assert plan_from_env({"JAXSPO_DISTRIBUTED": "auto"}, on_tpu_vm=False) == Plan("auto")
    explicit = {"JAXSPO_COORDINATOR": "h0:1", "JAXSPO_NUM_PROCESSES": "2", "JAXSPO_PROCESS_ID": "0"}
    assert plan_from_env(explicit | {"JAXSPO_DISTRIBUTED": "off"}, on_tpu_vm=True) is None
    assert plan_from_env(explicit | {"JAXSPO_NUM_PROCESSES": "1"}, on_tpu_vm=False) is None
    assert plan_from_env({}, on_tpu_vm=False) is None


def test_an_srun_gpu_task_gets_coordinator_and_gpu_from_slurm(monkeypatch):
    """Task 9 of 16 (2 nodes × 8 GPUs, launch/slurm.sbatch): jaxspo takes the SLURM plan and JAX's SLURM
    detection (what initialize() hands it to) finds the step's first node, the port and this task's GPU."""
    from jax._src.clusters import SlurmCluster

    task = {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_NODELIST": "gpu[03-04]",
        "SLURM_NTASKS": "16",
        "SLURM_STEP_NUM_TASKS": "16",
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NUM_NODES": "2",
    }
    assert plan_from_env(task, on_tpu_vm=False) == Plan("slurm", None, 16, 9)
    for name, value in task.items():
        monkeypatch.setenv(name, value)
    assert SlurmCluster.is_env_present()
    assert (
        SlurmCluster.get_coordinator_address(None, None) == f"gpu03:{65536 - 4096 + 4242 % 4096}"
    )  # port from the job id
    assert SlurmCluster.get_coordinator_address(None, "29500") == "gpu03:29500"  # jaxspo launch --slurm --port 29500
    assert (SlurmCluster.get_process_count(), SlurmCluster.get_process_id(), SlurmCluster.get_local_process_id()) == (
        16,
        9,
        1,
    )


def test_slurm_script_runs_one_task_per_gpu():
    options = [
        line.removeprefix("#SBATCH --").partition("=")
        for line in (REPO / "launch" / "slurm.sbatch").read_text().splitlines()
        if line.startswith("#SBATCH --")
    ]
    header = {name: value for name, _, value in options}
    assert header["ntasks-per-node"] == header["gpus-per-node"] == "8"


def test_auto_without_a_cluster_says_so():
    """In a fresh process: jax.distributed must run before anything initialises a backend."""
    probe = (
        "import jax\nfrom jaxspo import distributed\nfrom jaxspo.errors import DistributedError\n"
        "try:\n    distributed.initialize({'JAXSPO_DISTRIBUTED': 'auto'})\nexcept DistributedError as err:\n"
        "    print('ERROR', err)\nprint('INITIALIZED', jax.distributed.is_initialized())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "SLURM_", "JAXSPO_"))}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env).stdout
    assert "ERROR JAXSPO_DISTRIBUTED=auto: JAX detected no TPU VM, SLURM" in out, out
    assert "INITIALIZED False" in out


def test_single_process_helpers_are_plain_jax():
    assert distributed.initialize({}) is None and distributed.is_writer()
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    assert distributed.local_rows(sharding, x.shape) == slice(0, 8)
    g = distributed.to_global({"x": x}, {"x": sharding})["x"]
    assert g.sharding == sharding
    np.testing.assert_array_equal(distributed.to_host(g), x)
    assert distributed.broadcast_text("abc") == "abc"


# --- two real processes -------------------------------------------------------------------------------


def local_args(n: int, devices: int, **options) -> argparse.Namespace:
    defaults = {t: None for t in launch.TARGETS} | {o: None for o in launch.OPTION_TARGETS}
    return argparse.Namespace(
        **(defaults | {"local": n, "devices_per_process": devices, "env": [], "config": "-", "overrides": []} | options)
    )


def test_global_batches_and_gathers_across_two_processes(capsys):
    commands = launch.build_commands(local_args(2, 4))
    probe = [
        dataclasses.replace(c, argv=[sys.executable, str(REPO / "tests" / "multihost_probe.py")]) for c in commands
    ]
    assert launch.run(probe) == 0
    out = capsys.readouterr().out
    assert "[0] ok 0 3" in out and "[1] ok 1 3" in out, out[-3000:]


# --- training: 2 × 4 and 4 × 2 processes against 1 × 8, on the (2, 2, 2) mesh -------------------------
# Three whole runs: 1 × 8 and 2 × 4 from the start, then 4 × 2 from the 2 × 4 run's step-2 checkpoint (a run
# per layout costs a compile per process; the resumed 4 × 2 run checks both that layout's steps and a resume
# across processes, with each parameter's shards now split over other processes than those that saved it).

# No SFT phase: it runs the same multi-process machinery (global batches, gathers, checkpoints) as the preference
# phase, which is under test here; leaving it out saves ~10% of each process's CPU time.
TINY = [
    *TINY_MODEL_AND_DATA,
    "trainer.sft_steps=0",
    "trainer.steps=4",
    "trainer.batch_size=8",
    "trainer.eval_every=0",
    "trainer.grad_accum_steps=2",
    "eval.num_pairs=16",
    "eval.num_prompts=8",
    "eval.max_new_tokens=4",
    "logging.log_every=1",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "logging.plot=false",
    "checkpoint.every_steps=2",
    "mesh.data=2",
    "mesh.fsdp=2",
    "mesh.tensor=2",
]
# Identical numerics settings in every run; the cheaper LLVM back end and fusion emitters (tests/conftest.py) cut each
# process's compile time.
ENV = [
    "--env",
    "JAX_DEFAULT_MATMUL_PRECISION=highest",
    "--env",
    "XLA_FLAGS=--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false",
]
LAYOUTS = [(1, 8), (2, 4)]  # (processes, devices per process) of the runs from the start


def launch_train(processes: int, devices: int, run_dir: Path) -> str:
    argv = [
        sys.executable,
        "-m",
        "jaxspo",
        "launch",
        "--local",
        str(processes),
        "--devices-per-process",
        str(devices),
        *ENV,
        "configs/demo.yaml",
        *TINY,
        f"run_dir={run_dir}",
    ]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]  # perf/*: wall-time figures


def final_params(run_dir: Path) -> list[np.ndarray]:
    """The saved policy, read onto this process's first device (whatever topology wrote it)."""
    path = (run_dir / "params").resolve()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), checkpointer.metadata(path).item_metadata
        )
        return [np.asarray(x) for x in jax.tree.leaves(checkpointer.restore(path, target))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[tuple[int, int], tuple[Path, str]]:
    out = {}
    for processes, devices in LAYOUTS:
        run_dir = tmp_path_factory.mktemp(f"p{processes}x{devices}")
        out[processes, devices] = run_dir, launch_train(processes, devices, run_dir)
    return out


def assert_same_run(got: list[dict], want: list[dict]) -> None:
    """Same rows; per-step losses within 1e-6; other metrics within float32 noise.

    Accuracies are counts of signs and flip on noise where a margin is ~0 (the first preference step,
    policy = reference), so they are left to the losses and margins they derive from.
    """
    assert [(r["phase"], r["step"]) for r in got] == [(r["phase"], r["step"]) for r in want]
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        if "loss" in w:
            assert abs(g["loss"] - w["loss"]) <= 1e-6, (w["phase"], w["step"], g["loss"], w["loss"])
        for key in w.keys() - {"phase", "step"}:
            if "accurac" not in key:
                np.testing.assert_allclose(
                    g[key], w[key], rtol=1e-5, atol=1e-6, err_msg=f"{w['phase']} {w['step']} {key}"
                )


def assert_one_writer(stdout: str, run_dir: Path, one_dir: Path) -> None:
    """The summary is printed once, by process 0, and the files exist once."""
    assert stdout.count("run directory:") == 1 and "[0] run directory:" in stdout
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in one_dir.iterdir())


@pytest.mark.slow
def test_two_processes_train_as_one_process(runs):
    (one_dir, _), (run_dir, stdout) = runs[1, 8], runs[2, 4]
    assert_same_run(metrics(run_dir), metrics(one_dir))
    for got, want in zip(final_params(run_dir), final_params(one_dir), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert_one_writer(stdout, run_dir, one_dir)


@pytest.mark.slow
def test_four_processes_resume_the_two_process_checkpoint_and_train_as_one_process(runs, tmp_path):
    (one_dir, _), (two_dir, _) = runs[1, 8], runs[2, 4]
    run_dir = tmp_path / "resumed"
    shutil.copytree(two_dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "preference" / "4")  # as if killed after the step-2 checkpoint
    shutil.rmtree(run_dir / "params")
    stdout = launch_train(4, 2, run_dir)
    for process in range(4):
        assert f"[{process}] jaxspo: resuming preference at step 2" in stdout, stdout[-3000:]
    assert_same_run(metrics(run_dir), metrics(one_dir))
    for got, want in zip(final_params(run_dir), final_params(one_dir), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert_one_writer(stdout, run_dir, one_dir)
