"""The learner's language: every message the package shows has its Chinese, and the language is
chosen as documented (labxds/i18n/__init__.py)."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from labxds import i18n
from labxds.i18n import _, explain, language, ngettext, set_language

REPO = Path(__file__).resolve().parents[2]
LOCALE = REPO / "labxds" / "i18n" / "locale"
PO = LOCALE / "zh_CN" / "LC_MESSAGES" / "labxds.po"
KEYWORDS = {"_": None, "N_": None, "ngettext": (1, 2)}
PLACEHOLDER = re.compile(r"\{[a-z_]*\}")


def _catalog():
    with PO.open("rb") as fh:
        return read_po(fh, locale="zh_CN", domain="labxds")


def _source_messages() -> set[str]:
    found = set()
    for _file, _line, message, _comments, _ctx in extract_from_dir(
        str(REPO / "labxds"), method_map=[("**.py", "python")], keywords=KEYWORDS
    ):
        found.add(message if isinstance(message, str) else message[0])
    return found


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LABXDS_LANG", "JPY_SESSION_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", "/nonexistent")
    set_language(None)
    yield
    set_language(None)


def test_every_message_in_the_code_has_its_chinese() -> None:
    catalog = _catalog()
    translated = {m.id if isinstance(m.id, str) else m.id[0]: m for m in catalog if m.id}
    in_code = _source_messages()
    missing = sorted(in_code - set(translated))
    assert not missing, f"messages without a zh_CN entry (run `make i18n`, translate in tools/zh_CN.json): {missing}"
    empty = sorted(k for k, m in translated.items() if k in in_code and (not m.string or m.fuzzy))
    assert not empty, f"untranslated or fuzzy: {empty}"


def test_translations_keep_their_placeholders() -> None:
    for message in _catalog():
        if not message.id or isinstance(message.id, tuple):
            continue
        assert set(PLACEHOLDER.findall(message.id)) == set(PLACEHOLDER.findall(message.string)), message.id


def test_the_compiled_catalogue_is_the_po_file() -> None:
    out = io.BytesIO()
    write_mo(out, _catalog())
    assert out.getvalue() == PO.with_suffix(".mo").read_bytes(), "labxds.mo is stale: run `make i18n`"


def test_english_by_default_and_chinese_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert language() == "en" and _("control plane") == "control plane"
    monkeypatch.setenv("LABXDS_LANG", "zh-CN")
    assert language() == "zh_CN" and _("control plane") == "控制平面"
    assert ngettext("{n} learner", "{n} learners", 2) == "{n} learners"  # no catalogue entry: English
    assert set_language("en") == "en" and _("control plane") == "control plane"  # this process's choice wins
    with pytest.raises(ValueError, match="fr"):
        set_language("fr")


def test_a_kernel_running_a_chinese_notebook_speaks_chinese(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jupyter gives a notebook's kernel the notebook's path in JPY_SESSION_NAME."""
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/me/labxds/notebooks/zh-CN/01_setting_up.ipynb")
    assert language() == "zh_CN"
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/me/labxds/notebooks/01_setting_up.ipynb")
    assert language() == "en"


def test_jupyterlabs_interface_language_is_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = tmp_path / "@jupyterlab" / "translation-extension" / "plugin.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text('{\n  // JupyterLab writes comments in its settings\n  "locale": "zh_CN"\n}\n')
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(tmp_path))
    assert language() == "zh_CN"
    settings.write_text('{"locale": "default"}')
    assert language() == "en"


def test_a_busy_port_is_explained_in_chinese_in_a_new_process() -> None:
    """The real error a learner meets, from a fresh interpreter with only LABXDS_LANG set."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = f"from labxds import ControlPlane\ntry:\n    ControlPlane(port={port}).start()\nexcept OSError as e:\n    print(e)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env={"LABXDS_LANG": "zh_CN", "PATH": "/usr/bin:/bin"}, cwd=REPO)
    assert f"127.0.0.1 上的端口 {port} 已被其他进程占用" in out.stdout, out.stdout + out.stderr


def test_envoys_words_stay_and_get_an_explanation(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "Proto constraint validation failed (HttpConnectionManagerValidationError.StatPrefix: value length must be at least 1 characters)"
    assert "stat_prefix" in (explain(text) or "")
    monkeypatch.setenv("LABXDS_LANG", "zh_CN")
    assert explain(text) == "HTTP 连接管理器需要非空的 stat_prefix：Envoy 用它为统计指标命名。"
    assert explain("something Envoy has never said") is None and explain(None) is None


def test_the_translators_table_and_the_catalogue_agree() -> None:
    table = json.loads((REPO / "tools" / "zh_CN.json").read_text(encoding="utf-8"))
    for message in _catalog():
        if message.id and isinstance(message.id, str):
            assert table.get(message.id) == message.string, message.id
    assert i18n.LANGUAGES == ("en", "zh_CN")
