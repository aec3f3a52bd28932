"""Charts in Chinese: the lessons' own pyplot charts and LiveChart write ``tr()``/``_()`` titles and
labels; labxds.notebook lets matplotlib fall back on a font with Han characters for them
(diagrams.use_han_font), so they are drawn, not empty boxes (matplotlib warns for each glyph it
cannot draw)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator

import matplotlib
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from labxds.i18n import set_language
from labxds.notebook import diagrams, tr


@pytest.fixture
def rc() -> Iterator[None]:
    """matplotlib's settings as they were, after the test."""
    with matplotlib.rc_context():
        yield
    set_language(None)


def _draw_titled(title: str) -> None:
    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_ylabel(title)
    FigureCanvasAgg(fig)
    fig.savefig(io.BytesIO(), format="png")


def test_a_chinese_chart_is_drawn_with_a_han_font(rc: None) -> None:
    set_language("zh_CN")
    title = tr("Weighted clusters: asked vs observed")
    assert title != "Weighted clusters: asked vs observed", "the lesson's chart title has no Chinese in the catalogue"
    matplotlib.rcParams["font.family"] = ["sans-serif"]
    with pytest.warns(UserWarning, match="missing from font"):  # without a Han font: empty boxes
        _draw_titled(title)
    family = diagrams.use_han_font()
    assert family and matplotlib.rcParams["font.family"] == ["sans-serif", family]
    assert diagrams.use_han_font() == family and matplotlib.rcParams["font.family"] == ["sans-serif", family]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _draw_titled(title)


def test_english_leaves_matplotlibs_fonts_alone(rc: None) -> None:
    set_language("en")
    before = list(matplotlib.rcParams["font.family"])
    assert diagrams.use_han_font() is None
    assert list(matplotlib.rcParams["font.family"]) == before
