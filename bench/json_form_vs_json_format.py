"""Does labxds's fast JSON-form parser (labxds/xds/json_form.py) pay for its code?

Issue 12 asks to keep it only if it beats protobuf's ``json_format`` by more than run-to-run noise.
Two measurements, each interleaved (the two parsers alternate round by round, so a busy machine
slows both alike):

1. **loading snapshot files** with ``labxds.files.load_path``: the sandbox's three resources, and
   directories of 100 and 1,000 clusters (each with an inline endpoint) plus the sandbox's route
   and listener: what ``labxds serve --snapshot`` does on every change, minus the push;
2. the **end-to-end** serve row comes from ``bench/propagation.py --what-if json_format`` (the
   switch in ``bench/serve_whatif.py``); its figures are copied into docs/benchmarks.md.

The noise figure is the spread of the per-round ratio (its interquartile range): a difference
smaller than that is not a difference.

    python bench/json_form_vs_json_format.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, machine_info  # noqa: E402
from google.protobuf import json_format  # noqa: E402

from labxds.files import load_path  # noqa: E402
from labxds.xds import json_form, messages  # noqa: E402

FAST = messages.parse_dict


def _json_format(data: Any, msg: Any) -> None:
    json_form._import_nested_types(data)
    json_format.ParseDict(data, msg)


def _clusters_dir(where: Path, n: int) -> Path:
    where.mkdir(parents=True)
    sandbox = ROOT / "examples" / "sandbox"
    for name in ("rds.yaml", "lds.yaml"):
        (where / name).write_text((sandbox / name).read_text())
    resources = [{
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "example_proxy_cluster" if i == 0 else f"cluster_{i:05d}",
        "type": "STRICT_DNS", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": f"cluster_{i:05d}", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8000 + i % 1000}}}}]}]},
    } for i in range(n)]
    (where / "cds.json").write_text(json.dumps({"version_info": "1", "resources": resources}))
    return where


def _time(path: Path) -> float:
    start = time.perf_counter()
    load_path(path)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"sandbox (3 resources)": ROOT / "examples" / "sandbox",
                 "100 clusters": _clusters_dir(Path(tmp) / "c100", 100),
                 "1,000 clusters": _clusters_dir(Path(tmp) / "c1000", 1000)}
        out: dict[str, Any] = {"machine": machine_info(), "rounds": args.rounds, "cases": {}}
        for case, path in cases.items():
            reps = max(1, 300 // (1 + int(case.split()[0].replace(",", "")) // 10)) if "clusters" in case else 300
            times: dict[str, list[float]] = {"json_form": [], "json_format": []}
            for name, parse in (("json_form", FAST), ("json_format", _json_format)):  # warm both
                messages.parse_dict = parse  # type: ignore[assignment]
                _time(path)
            for r in range(args.rounds):
                order = ("json_form", "json_format") if r % 2 == 0 else ("json_format", "json_form")
                for name in order:
                    messages.parse_dict = FAST if name == "json_form" else _json_format  # type: ignore[assignment]
                    times[name].append(min(_time(path) for _ in range(reps)))
            messages.parse_dict = FAST  # type: ignore[assignment]
            ratios = [b / a for a, b in zip(times["json_form"], times["json_format"])]
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            row = {"json_form_ms": statistics.median(times["json_form"]) * 1e3,
                   "json_format_ms": statistics.median(times["json_format"]) * 1e3,
                   "ratio_median": statistics.median(ratios), "ratio_iqr": [q1, q3]}
            out["cases"][case] = row
            print(f"{case:24} json_form {row['json_form_ms']:8.2f} ms   json_format {row['json_format_ms']:8.2f} ms   "
                  f"json_format/json_form x{row['ratio_median']:.2f} (IQR {q1:.2f}-{q3:.2f})", flush=True)
    (RESULTS / "json_form_vs_json_format.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
