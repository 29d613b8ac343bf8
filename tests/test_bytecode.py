"""The platform's modules get current bytecode before its processes start, so none compiles them again."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from heater.bytecode import compile_sources


#: Packages of the test's own (the platform's packages are installed in editable mode and
#: would be imported from the checkout whatever the path).
PACKAGES = ("sensorpkg", "relaypkg")


def _write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _import_trace(root: Path, module: str) -> str:
    """``python -v``'s account of importing ``module`` in a process that may not write bytecode."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-v", "-c", f"import {module}"], capture_output=True, text=True, env=env,
                          timeout=60, check=True)
    return done.stderr


def test_a_process_reads_the_bytecode_instead_of_compiling_the_source(tmp_path: Path) -> None:
    source = _write(tmp_path, "sensorpkg/limits.py", "FATAL_C = 85.0\n")
    _write(tmp_path, "sensorpkg/__init__.py", "")
    assert f"code object from {source}" in _import_trace(tmp_path, "sensorpkg.limits")  # compiled, then thrown away

    assert compile_sources(tmp_path, PACKAGES)
    trace = _import_trace(tmp_path, "sensorpkg.limits")
    assert f"{importlib.util.cache_from_source(str(source))} matches {source}" in trace
    assert f"code object from {source}" not in trace


def test_an_edited_module_is_compiled_again(tmp_path: Path) -> None:
    source = _write(tmp_path, "relaypkg/frames.py", "ID = 1\n")
    assert compile_sources(tmp_path, PACKAGES)
    cached = Path(importlib.util.cache_from_source(str(source)))
    before = cached.read_bytes()
    _write(tmp_path, "relaypkg/frames.py", "ID = 2  # edited\n")
    os.utime(source, (source.stat().st_atime, source.stat().st_mtime + 10))
    assert compile_sources(tmp_path, PACKAGES)
    assert cached.read_bytes() != before


def test_a_module_that_does_not_compile_is_reported_and_the_others_are_compiled(tmp_path: Path) -> None:
    _write(tmp_path, "sensorpkg/broken.py", "def (:\n")
    fine = _write(tmp_path, "relaypkg/fine.py", "X = 1\n")
    assert compile_sources(tmp_path, PACKAGES) is False
    assert Path(importlib.util.cache_from_source(str(fine))).is_file()


def test_the_platform_compiles_every_package_it_installs() -> None:
    import configparser

    from heater import bytecode

    setup = configparser.ConfigParser()
    setup.read(bytecode.ROOT / "setup.cfg")
    installed = {line.strip().rstrip("*") for line in setup["options.packages.find"]["include"].split() if line.strip()}
    assert installed == set(bytecode.PACKAGES)
