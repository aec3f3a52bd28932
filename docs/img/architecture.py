"""Draw docs/img/architecture.png: the layers of labxds, read from pyproject.toml's import-linter
contract and from the package's folders, so the picture cannot drift from the code.

    .venv/bin/python docs/img/architecture.py
"""

from __future__ import annotations

import pathlib
import tomllib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXTRA = {"cli": "core", "notebook": "[notebook]", "classroom": "[classroom]", "lab": "[lab]", "envoy": "[lab]",
         "files": "core", "tls": "core; certificates: [classroom]", "xds": "core", "net": "core", "i18n": "core"}


def modules(layer: str) -> list[str]:
    folder = ROOT / "labxds" / layer
    names = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    names += sorted(f"{p.name}/" for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    return names


def main() -> None:
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    rows = [[name.strip().removeprefix("labxds.") for name in row.split("|")] for row in contract["layers"]]
    fig, ax = plt.subplots(figsize=(11, 0.95 * len(rows) + 0.8))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, len(rows) + 0.3)
    ax.axis("off")
    for i, row in enumerate(rows):
        y = len(rows) - i - 0.9
        width = 9.2 / len(row)
        for j, layer in enumerate(row):
            x = 0.4 + j * width
            ax.add_patch(FancyBboxPatch((x, y), width - 0.15, 0.75, boxstyle="round,pad=0.02",
                                        facecolor="#e8f0fe" if EXTRA[layer].startswith("core") else "#fff4e0",
                                        edgecolor="#555"))
            ax.text(x + 0.12, y + 0.5, f"labxds.{layer}", fontsize=11, weight="bold", va="center")
            ax.text(x + width - 0.3, y + 0.5, EXTRA[layer], fontsize=8, va="center", ha="right", color="#666")
            ax.text(x + 0.12, y + 0.2, ", ".join(modules(layer)), fontsize=7.5, va="center", color="#333",
                    wrap=True)
    ax.annotate("", xy=(9.85, 0.2), xytext=(9.85, len(rows) - 0.2),
                arrowprops={"arrowstyle": "->", "color": "#888", "lw": 1.5})
    ax.text(9.75, len(rows) / 2, "imports run downward only", rotation=90, va="center", ha="right",
            fontsize=8, color="#666")
    ax.set_title("labxds: layers (blue: installed by `pip install labxds`; orange: an extra)", fontsize=11)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "img" / "architecture.png", dpi=110)


if __name__ == "__main__":
    main()
