"""Messages in the learner's language: gettext catalogues, English by default.

Every sentence labxds shows a learner goes through ``_()`` (and ``ngettext`` for counts); the
catalogues are ``labxds/i18n/locale/<lang>/LC_MESSAGES/labxds.po`` (compiled to ``.mo``), kept
with Babel (``pybabel extract/update/compile``, see docs/i18n.md). The language is, first match:

1. ``set_language(...)`` called in this process;
2. the ``LABXDS_LANG`` environment variable (``zh_CN``, ``zh-CN``, ``en``);
3. the notebook being run: a kernel started by Jupyter for a notebook under ``zh-CN/`` (Jupyter
   puts its path in ``JPY_SESSION_NAME``), so the Chinese lessons speak Chinese with the same code;
4. JupyterLab's interface language (its translation setting, as ``make lab-zh`` sets it);
5. English.

Envoy's own error texts are never translated (they are what a learner searches for); ``explain``
adds a sentence in the learner's language beside the common ones.
"""

from __future__ import annotations

import gettext as _gettext
import json
import os
import re
import threading
from pathlib import Path

__all__ = ["LANGUAGES", "N_", "_", "explain", "language", "ngettext", "set_language"]

#: Languages with a catalogue, and English (the source).
LANGUAGES = ("en", "zh_CN")
_LOCALE_DIR = Path(__file__).resolve().parent / "locale"
_lock = threading.Lock()
_chosen: str | None = None
_cache: dict[str, _gettext.NullTranslations] = {}


def _normalize(name: str | None) -> str | None:
    if not name:
        return None
    text = name.strip().replace("-", "_")
    low = text.lower()
    if low.startswith("zh"):
        return "zh_CN"
    if low.startswith("en") or low in ("c", "posix"):
        return "en"
    return None


def _jupyterlab_locale() -> str | None:
    """JupyterLab's interface language, from its user settings (what the language menu saves)."""
    settings_dir = os.environ.get("JUPYTERLAB_SETTINGS_DIR") or str(Path.home() / ".jupyter" / "lab" / "user-settings")
    path = Path(settings_dir) / "@jupyterlab" / "translation-extension" / "plugin.jupyterlab-settings"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    text = re.sub(r"^\s*//.*$", "", text, flags=re.M)  # the settings file allows comments
    try:
        locale = json.loads(text).get("locale")
    except (ValueError, AttributeError):
        return None
    return _normalize(locale) if isinstance(locale, str) and locale != "default" else None


def language() -> str:
    """The language messages are shown in now: ``"en"`` or ``"zh_CN"``."""
    if _chosen is not None:
        return _chosen
    env = _normalize(os.environ.get("LABXDS_LANG"))
    if env:
        return env
    session = os.environ.get("JPY_SESSION_NAME", "")
    if re.search(r"(^|[/\\])zh[-_]CN([/\\]|$)", session):
        return "zh_CN"
    return _jupyterlab_locale() or "en"


def set_language(name: str | None) -> str:
    """Choose the language for this process (``None``: back to the environment's); returns it."""
    global _chosen
    lang = _normalize(name) if name else None
    if name and lang is None:
        raise ValueError(f"no messages in {name!r}: choose one of {', '.join(LANGUAGES)}")
    _chosen = lang
    return language()


def _translations(lang: str) -> _gettext.NullTranslations:
    with _lock:
        found = _cache.get(lang)
        if found is None:
            found = _gettext.translation("labxds", _LOCALE_DIR, languages=[lang], fallback=True)
            _cache[lang] = found
        return found


def _(message: str) -> str:
    """``message`` in the learner's language (itself when no catalogue has it)."""
    lang = language()
    return message if lang == "en" else _translations(lang).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    lang = language()
    if lang == "en":
        return singular if n == 1 else plural
    return _translations(lang).ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Mark a message for extraction where it is defined; translate it with ``_()`` where shown."""
    return message


#: Common texts of Envoy's, and what they mean for a learner (matched in Envoy's English).
_ENVOY_TEXTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"StatPrefix|stat_prefix", re.I),
     N_("The HTTP connection manager needs a non-empty stat_prefix: Envoy names its statistics with it.")),
    (re.compile(r"unknown cluster|cluster '[^']*' (does not exist|not found)", re.I),
     N_("A route names a cluster Envoy does not have: push the cluster first, or fix the name.")),
    (re.compile(r"cannot bind|Address already in use|bind\(\)", re.I),
     N_("The listener's port is already taken on this machine (by Envoy's admin port or another program).")),
    (re.compile(r"no healthy upstream", re.I),
     N_("The cluster has no endpoint Envoy considers healthy: check the endpoints and their health checks.")),
    (re.compile(r"upstream connect error|connection refused", re.I),
     N_("Envoy could not connect to the upstream: is the service running, on that address and port?")),
    (re.compile(r"has duplicate address", re.I),
     N_("Two listeners want the same address and port: give the new listener a port of its own "
        "(lab.spare_port() gives one).")),
    (re.compile(r"duplicate (listener|cluster|route)", re.I),
     N_("Two resources of one type have the same name in one update: names must be unique.")),
    (re.compile(r"Invalid duration|Expected positive duration", re.I),
     N_("A duration (a timeout, say) is negative: Envoy refuses it, and the whole update of that type with it.")),
    (re.compile(r"Sum of weights in the weighted_cluster", re.I),
     N_("The weights of a weighted_clusters route add up to 0: give at least one cluster a positive weight.")),
    (re.compile(r"\"path_specifier\", reason: is required", re.I),
     N_("A route's match needs a path: a prefix, a path or a safe_regex (\"prefix\": \"/\" matches every request).")),
    (re.compile(r"Only a single wildcard domain", re.I),
     N_("Two virtual hosts of one route configuration both claim every domain (\"*\"): only one may.")),
    (re.compile(r"Didn't find a registered implementation", re.I),
     N_("A filter or extension names a type this Envoy does not know: check the name and the typed_config's @type.")),
    # the general case, after the particular ones above
    (re.compile(r"Proto constraint validation failed", re.I),
     N_("A field breaks a rule of Envoy's API (for example a value out of range or a required field left empty)."
        )),
    # Envoy's response flags (%RESPONSE_FLAGS%, the course's x-lab-response-flags header): upper case, whole.
    (re.compile(r"(?<![\w-])NC(?![\w-])"),
     N_("Response flag NC (no cluster): the route names a cluster Envoy does not have, or one still warming; "
        "Envoy answers 503 itself.")),
    (re.compile(r"(?<![\w-])UH(?![\w-])"),
     N_("Response flag UH (no healthy upstream): the cluster exists but has no healthy endpoint, for example no "
        "endpoints at all; Envoy answers 503 itself.")),
    (re.compile(r"(?<![\w-])NR(?![\w-])"),
     N_("Response flag NR (no route): no route matches the request, or the listener has no route configuration "
        "yet; Envoy answers 404 itself.")),
    (re.compile(r"(?<![\w-])UF(?![\w-])"),
     N_("Response flag UF (upstream connection failure): Envoy could not connect to the endpoint it picked; "
        "Envoy answers 503 itself.")),
)


def explain(envoy_text: str | None) -> str | None:
    """A sentence in the learner's language about one of Envoy's common error texts, else None."""
    if not envoy_text:
        return None
    for pattern, meaning in _ENVOY_TEXTS:
        if pattern.search(envoy_text):
            return _(meaning)
    return None
