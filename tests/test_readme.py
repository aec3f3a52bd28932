"""README's Python examples run as written (with free ports instead of the sandbox's, so they can
run beside other labs), against the real Envoy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from envoy_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.envoy
@pytest.mark.parametrize("readme", ["README.md", "README.zh-CN.md"])
def test_readme_python_examples_run(readme: str, tmp_path: Path) -> None:
    path = ROOT / readme
    if not path.exists():
        pytest.skip(f"{readme} does not exist yet")
    blocks = _python_blocks(path)
    assert blocks, f"{readme} has no Python example"
    ports = {"18000": str(free_port()), "19000": str(free_port()), "10000": str(free_port())}
    env = dict(os.environ, LABXDS_XDS_PORT=ports["18000"], LABXDS_ADMIN_PORT=ports["19000"],
               LABXDS_LISTENER_PORT=ports["10000"])
    for i, block in enumerate(blocks):
        code = re.sub(r"\b(18000|19000|10000)\b", lambda m: ports[m.group(1)], block)
        script = tmp_path / f"example{i}.py"
        script.write_text(code)
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90,
                              env=env, cwd=tmp_path)
        assert done.returncode == 0, f"{readme} example {i + 1} failed:\n{block}\n{done.stderr[-3000:]}"
