"""What reading a snapshot file costs, stage by stage (micro benchmark, no sockets, no Envoy).

labxds reads snapshot files as Envoy reads them, leniencies included (lowercase enums, one
mapping for a list, quoted booleans...); those must not cost the common case. Per operation, the
best of ROUNDS rounds of a loop (the best: the machine may be shared, and others only add time):

* ``yaml_text``: a sandbox YAML file's text into data (the mean of cds, lds, rds);
* ``json_text``: the sandbox's three resources as one JSON file into data;
* ``resources``: those three resources, data into messages (the fast path);
* ``load_sandbox``: ``load_path(examples/sandbox)``: read, parse, snapshot, consistency check;
* ``refused_resource``: a cluster with a misspelled field (the error path);
* ``lenient_resources``: the three resources with lowercase enums and one mapping for each list of
  one (the slow path; absent where that form is refused).

    python bench/file_form.py [--rounds N] [--against CHECKOUT]

``--against`` loads the labxds package of another checkout (say ``git worktree add /tmp/old
main``) beside this one and measures both in the same rounds, interleaved, so that a busy machine
slows both alike. Prints microseconds per operation; writes ``bench/results/file_form.json``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT  # noqa: E402

SANDBOX = ROOT / "examples" / "sandbox"


class Reader:
    """The file-reading functions of one labxds package (this checkout's, or another's)."""

    def __init__(self, package: ModuleType) -> None:
        name = package.__name__
        try:  # the layered package
            self.parse = importlib.import_module(f"{name}.files.parse")
            self.load_path = importlib.import_module(f"{name}.files").load_path
            self.to_message = importlib.import_module(f"{name}.xds.messages").to_message
        except ImportError:  # before it
            self.parse = importlib.import_module(f"{name}.snapshot_files")
            self.load_path = self.parse.load_path
            self.to_message = importlib.import_module(f"{name}.messages").to_message


def _package(name: str, checkout: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        name, checkout / "labxds" / "__init__.py", submodule_search_locations=[str(checkout / "labxds")])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def lenient(doc: Any, key: str = "") -> Any:
    """The resource as Envoy's leniencies allow: enums in lowercase, one mapping for a list of one."""
    if isinstance(doc, dict):
        return {k: lenient(v, k) for k, v in doc.items()}
    if isinstance(doc, list):
        return lenient(doc[0]) if len(doc) == 1 else [lenient(v) for v in doc]
    if isinstance(doc, str) and key in ("type", "lb_policy", "dns_lookup_family", "codec_type", "resource_api_version"):
        return doc.lower()
    return doc


def operations(reader: Reader) -> dict[str, tuple[Callable[[], Any], int]]:
    """Each operation and how many units one call does (the result is per unit)."""
    texts = {p: p.read_text() for p in sorted(SANDBOX.glob("*.yaml"))}
    items = [r for p, t in texts.items() for r in reader.parse._parse_yaml(p, t).data["resources"]]
    json_text = json.dumps({"resources": items})
    json_path = Path("sandbox.json")
    typo = {**items[0], "conect_timeout": "1s"}
    lenient_items = [lenient(copy.deepcopy(r)) for r in items]

    def refused() -> None:
        try:
            reader.to_message(typo)
        except ValueError:
            return
        raise AssertionError("the misspelled field was accepted")

    ops: dict[str, tuple[Callable[[], Any], int]] = {
        "yaml_text": (lambda: [reader.parse._parse_yaml(p, t) for p, t in texts.items()], len(texts)),
        "json_text": (lambda: reader.parse._parse_json(json_path, json_text), 1),
        "resources": (lambda: [reader.to_message(r) for r in items], 1),
        "load_sandbox": (lambda: reader.load_path(SANDBOX), 1),
        "refused_resource": (refused, 1),
    }
    try:
        same = [reader.to_message(r) for r in lenient_items] == [reader.to_message(r) for r in items]
    except ValueError:
        same = False
    if same:
        ops["lenient_resources"] = (lambda: [reader.to_message(r) for r in lenient_items], 1)
    return ops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--against", type=Path, help="another checkout, measured alongside")
    args = parser.parse_args()
    sides = {"this": Reader(importlib.import_module("labxds"))}
    if args.against is not None:
        sides = {"against": Reader(_package("labxds_against", args.against.resolve())), **sides}
    ops = {side: operations(reader) for side, reader in sides.items()}
    best: dict[str, dict[str, float]] = {side: {} for side in sides}
    for _ in range(args.rounds):
        for name in ops["this"]:
            for side in sides:
                if name not in ops[side]:
                    continue
                fn, units = ops[side][name]
                loops = 20 if name == "load_sandbox" else 100
                t0 = time.perf_counter()
                for _ in range(loops):
                    fn()
                us = (time.perf_counter() - t0) / loops / units * 1e6
                best[side][name] = min(best[side].get(name, us), us)
    for name in ops["this"]:
        row = f"{name:18s}" + "".join(
            f"  {side} {best[side][name]:8.1f} us" if name in best[side] else f"  {side} {'refused':>8s}   "
            for side in sides)
        if "against" in sides and name in best["against"]:
            row += f"  ({best['this'][name] / best['against'][name] - 1:+.0%})"
        print(row)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"rounds": args.rounds, "us_per_op": best["this"]}
    if args.against is not None:
        out["against"] = {"checkout": str(args.against), "us_per_op": best["against"]}
    (RESULTS / "file_form.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
