"""trainer.compilation_cache_dir: ``auto`` caches on TPU and GPU only; a path caches anywhere; ``""`` is off."""

import jax
import pytest

from jaxspo.compilation_cache import DEFAULT_DIRECTORY, cache_directory, enable_compilation_cache


@pytest.mark.parametrize(
    "setting, backend, expected",
    [
        ("auto", "tpu", DEFAULT_DIRECTORY),
        ("auto", "gpu", DEFAULT_DIRECTORY),
        ("auto", "cpu", ""),
        ("/some/dir", "cpu", "/some/dir"),
        ("", "tpu", ""),
    ],
)
def test_the_setting_names_a_directory_per_backend(setting, backend, expected):
    assert cache_directory(setting, backend) == expected


def test_auto_leaves_the_cache_off_on_this_cpu_backend_unless_the_environment_sets_it(tmp_path, monkeypatch):
    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        assert jax.default_backend() == "cpu"
        assert enable_compilation_cache("auto") is None
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
        assert enable_compilation_cache("auto") == tmp_path / "env"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "env")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
