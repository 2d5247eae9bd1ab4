"""The import graph of jaxspo/ (every absolute ``jaxspo.`` import, at module or function level) has no cycle;
reading a config imports no jax; the training loop knows nothing of the host-heap tuning."""

import ast
import subprocess
import sys
from pathlib import Path

import jaxspo

PACKAGE = Path(jaxspo.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the jaxspo modules it imports (``from jaxspo.a import b`` counts ``jaxspo.a.b`` if that is a
    module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, …, a], or None (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "jaxspo.train.loop" in graph["jaxspo.cli"]  # imported inside cli._train
    assert (
        "jaxspo.objectives.selfsup" in graph["jaxspo.objectives.build"]
    )  # ``from jaxspo.objectives import kl, selfsup``
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_jaxspo_modules():
    graph = import_graph()
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_the_config_and_the_command_line_import_no_jax_flax_or_transformers():
    """``jaxspo --help`` and a config error (a wrong type, a setting out of range) pay for none of them; the CLI's
    commands import them lazily."""
    probe = (
        "import sys, jaxspo.config, jaxspo.cli\n"
        "for bad in ('trainer.steps=abc', 'loss.beta=-1'):\n"
        "    try:\n"
        "        jaxspo.config.load_config('configs/demo.yaml', [bad])\n"
        "    except jaxspo.config.ConfigError as err:\n"
        "        assert str(err).startswith(bad.split('=')[0]), err\n"
        "    else:\n"
        "        raise AssertionError(bad)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'transformers', 'tokenizers', 'numpy'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def jaxspo_modules_after(argv: list[str]) -> set[str]:
    """The jaxspo modules loaded by ``jaxspo <argv>`` (run in a fresh interpreter) by the time it ends."""
    probe = (
        "import sys\n"
        "from jaxspo.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(m for m in sys.modules if m.split('.')[0] == 'jaxspo'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120
    )
    return set(done.stdout.split("\n")[-2].split())


def test_the_help_loads_only_the_parser_and_a_config_error_only_the_config():
    """Every module loaded before the first line costs ``jaxspo --help`` and a config error CPU time: the help needs
    the parser alone; a config error the config's modules, not the launcher, the platform probe or the heap tuning."""
    assert jaxspo_modules_after(["--help"]) == {"jaxspo", "jaxspo.cli", "jaxspo.cli_arguments", "jaxspo.errors"}
    config_error = jaxspo_modules_after(["train", "configs/demo.yaml", "trainer.steps=abc"])
    assert "jaxspo.config" in config_error
    assert not config_error & {"jaxspo.launch", "jaxspo.platforms", "jaxspo.host_memory"}, config_error


def test_the_training_loop_imports_nothing_from_the_host_heap_module():
    """The heap tuning registers loop hooks when ``trainer.host_heap`` asks for it (jaxspo/train/hooks.py)."""
    graph = import_graph()
    importers = sorted(name for name, imported in graph.items() if "jaxspo.host_memory" in imported)
    assert not [name for name in importers if name.startswith("jaxspo.train")], importers
    assert "jaxspo.train.hooks" in graph["jaxspo.host_memory"]


def test_the_losses_import_nothing_from_data_models_or_train():
    """A loss is a pure function of log-probs: jaxspo/losses/ reads no rows, builds no model, runs no loop."""
    graph = import_graph()
    imported = {
        target
        for name, targets in graph.items()
        if name.startswith("jaxspo.losses")
        for target in targets
        if target.split(".")[1] in ("data", "models", "train")
    }
    assert not imported, sorted(imported)
    assert "jaxspo.losses.registry" in graph["jaxspo.losses.soft_spo"]  # the graph sees the package's own imports


def test_the_step_imports_no_objective():
    """The step takes an Objective: of the objectives package it names only the seam's type (for annotations)."""
    imported = {m for m in import_graph()["jaxspo.train.step"] if m.startswith("jaxspo.objectives")}
    assert imported <= {"jaxspo.objectives.base"}, imported


def test_the_lora_switch_is_read_in_one_place():
    """``lora.enabled`` (``lora.rank`` > 0) is read by jaxspo/lora/choose.py, which picks the full or the adapted
    view for training, ``jaxspo compile``, export and eval, and by the config checks; nowhere else."""
    readers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            owner = getattr(node, "value", None)
            if isinstance(node, ast.Attribute) and node.attr == "enabled":
                if (isinstance(owner, ast.Attribute) and owner.attr == "lora") or (
                    isinstance(owner, ast.Name) and owner.id == "lora"
                ):
                    readers.add(module_name(path))
    assert readers == {"jaxspo.lora.choose", "jaxspo.config_checks", "jaxspo.objectives.checks"}, sorted(readers)
