"""The way in: README's first commands, the Makefile's targets, .ci/run, pyproject.toml."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_dry_run(*args: str, mode: str = "-n") -> str:
    """What `make` would run (-n: nothing is executed; -t: only touch the targets)."""
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    result = subprocess.run(
        ["make", mode, "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def readme_commands(text: str) -> list[str]:
    """Shell commands in README's fenced code blocks, in order (prompts and comments dropped)."""
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            line = re.sub(r"^\s*\$\s*", "", line)  # a "$ " prompt
            line = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


# --- .ci/run -----------------------------------------------------------------------------------


def test_ci_run_calls_make_test():
    run = ROOT / ".ci" / "run"
    assert run.is_file(), ".ci/run is missing"
    text = run.read_text()
    assert text.startswith("#!/usr/bin/env bash") or text.startswith("#!/bin/bash")
    assert "set -euo pipefail" in text
    assert re.search(r"^\s*make test\b", text, flags=re.M), ".ci/run should run `make test`"
    assert os.access(run, os.X_OK), ".ci/run should be executable"


# --- README ------------------------------------------------------------------------------------


def test_readme_starts_with_make_lab_and_make_test():
    readme = ROOT / "README.md"
    assert readme.is_file(), (
        "README.md is missing: it must exist, and its first commands (in ``` code blocks) must be "
        "`make lab` then `make test`"
    )
    commands = readme_commands(readme.read_text())
    assert commands[:2] == ["make lab", "make test"], (
        f"README.md's first commands should be `make lab` then `make test`, found {commands[:2]}"
    )


# --- Makefile ----------------------------------------------------------------------------------


def test_make_test_runs_pytest_in_the_venv():
    out = make_dry_run("test")
    assert re.search(r"\.venv/bin/python -m pytest\b", out), f"`make test` should run .venv/bin/python -m pytest:\n{out}"


def test_make_test_sets_up_the_venv_first():
    # -W: pretend requirements.txt has just changed; the set-up must run before pytest.
    out = make_dry_run("-W", "requirements.txt", "test")
    install = out.find("install -r requirements.txt")
    editable = out.find("install --no-deps -e .")
    pytest_at = out.find("-m pytest")
    assert -1 < install < editable < pytest_at, out
    assert "pip -q" in out or " -q " in out, "keep pip quiet (-q)"


def test_make_venv_is_a_no_op_when_set_up(tmp_path):
    venv = f"VENV={tmp_path}"
    assert "install -r requirements.txt" in make_dry_run(venv, "venv")
    make_dry_run(venv, "venv", mode="-t")  # mark the set-up as done (touch the stamp), run nothing
    assert "pip" not in make_dry_run(venv, "venv"), "a second `make venv` should do nothing"


def test_make_lab_serves_the_notebooks_on_loopback():
    out = make_dry_run("lab")
    line = next((ln for ln in out.splitlines() if "jupyter lab" in ln), "")
    assert line, out
    for part in ("--notebook-dir=notebooks", "--ip=127.0.0.1", "--no-browser"):
        assert part in line, f"`make lab` lacks {part}: {line}"


# --- pyproject.toml ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_pyproject_package(pyproject):
    project = pyproject["project"]
    assert project["name"] == "labxds"
    assert project["requires-python"] == ">=3.11"
    assert project["scripts"]["labxds"] == "labxds.__main__:main"
    assert "data/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["labxds"]


def test_pytest_configuration(pyproject):
    ini = pyproject["tool"]["pytest"]["ini_options"]
    assert ini["testpaths"] == ["tests"]
    assert int(ini["timeout"]) == 120
    markers = {m.split(":")[0].strip() for m in ini["markers"]}
    assert {"envoy", "notebooks"} <= markers


def test_pyproject_dependencies_are_pinned_in_requirements(pyproject):
    """Each loose dependency of pyproject.toml is pinned in requirements.txt, within its range."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            [spec] = req.specifier
            pins[canonicalize_name(req.name)] = spec.version
    extras = [d for group in pyproject["project"]["optional-dependencies"].values() for d in group]
    for dep in pyproject["project"]["dependencies"] + [d for d in extras if not d.startswith("labxds")]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned in requirements.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.txt pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"
        )


# --- the browser tests' set-up --------------------------------------------------------------------


def test_ci_run_installs_chromium_as_root_and_requires_the_browser_tests():
    text = (ROOT / ".ci" / "run").read_text()
    install = re.search(r'if \[ "\$\(id -u\)" = 0 \]; then(.*?)\nfi', text, flags=re.S)
    assert install, ".ci/run should install Debian's chromium when it runs as root"
    body = install.group(1)
    assert "[ ! -x /usr/bin/chromium ]" in body, "install chromium only when it is missing"
    assert "DEBIAN_FRONTEND=noninteractive" in body and "apt-get update -qq" in body
    assert re.search(r"apt-get install -y\b.*\bchromium\b", body)
    assert "export LABXDS_BROWSER_TESTS=required" in body, "in CI the browser tests must run, not skip"
    assert text.index("LABXDS_BROWSER_TESTS=required") < text.index("\nmake test")


def _browser_tests(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """tests/browser in a pytest of its own, with ``env_extra`` in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LABXDS_"))}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(ROOT / "tests" / "browser")],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip


def test_without_chromium_the_browser_tests_skip_and_say_why():
    missing = "/nonexistent/chromium"
    result = _browser_tests({"LABXDS_CHROMIUM": missing})
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    reason = f"browser tests did not run: {missing} not found; install it with `apt-get install chromium` (root)"
    assert re.search(r"^SKIPPED \[\d+\] .*" + re.escape(reason), out, flags=re.M), out  # in the summary (-ra)
    assert re.search(r"\b3 skipped\b", out), out  # lesson 4 in English and in Chinese, the instructor's notebook

    required = _browser_tests({"LABXDS_CHROMIUM": missing, "LABXDS_BROWSER_TESTS": "required"})
    out = required.stdout + required.stderr
    assert required.returncode == 1 and "cannot run (LABXDS_BROWSER_TESTS=required)" in out, out
