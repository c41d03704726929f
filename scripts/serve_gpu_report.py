"""Merge `bench serve --record` files of a GPU run into docs/benchmarks/serve-gpu.json and print the
markdown tables of docs/benchmarks/serve-gpu.md: every arm against baseline at each concurrency, the
targets of the GPU end-to-end measurement, and where a decode step's time goes where a record holds
profiles (`bench serve --profile C`; they stay out of the JSON, whose schema is fixed).

    python scripts/serve_gpu_report.py OUT/mixtral-serve.json OUT/qwen3-serve.json [...] \\
        --json docs/benchmarks/serve-gpu.json > table.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lynx_sglang.tools.bench.profile import CATEGORIES, IDLE, OTHER
from lynx_sglang.tools.records import RecordError, read_record

# (shape, concurrency, arm): the largest TPOT ratio to baseline the target allows.
TARGETS = {
    ("mixtral-8x7b", 32, "budget:fraction=0.5"): 0.65,
    ("mixtral-8x7b", 16, "budget:fraction=0.5"): 0.70,
    ("qwen3-30b-a3b", 32, "budget:fraction=0.5"): 0.75,
}
SINGLE_ROW_TOLERANCE = 1.03  # concurrency 1: every arm within 3 % of baseline


def merge(records: list[dict]) -> dict:
    devices = {r["device"] for r in records}
    commits = {r["commit"] for r in records}
    if len(devices) > 1 or len(commits) > 1:
        raise SystemExit(f"records of different devices or commits: {sorted(devices)} {sorted(commits)}")
    rows = [row for r in records for row in r["rows"]]
    # by shape and concurrency (the stages run the targets' levels first); arms stay in the order run
    rows.sort(key=lambda row: (row["shape"], row["num_layers"], row["concurrency"]))
    return {"device": devices.pop(), "commit": commits.pop(),
            "command": " ; ".join(r["command"] for r in records), "rows": rows}


def baseline_of(row: dict, rows: list[dict]) -> dict | None:
    return next((b for b in rows if b["arm"] == "baseline" and b["shape"] == row["shape"]
                 and b["num_layers"] == row["num_layers"] and b["concurrency"] == row["concurrency"]), None)


def ratio(value, base) -> str:
    return "n/a" if value is None or not base else f"{value / base:.3f}"


def table(rows: list[dict]) -> list[str]:
    lines = ["| shape | layers | arm | kernel | conc | TPOT median ms | TPOT p90 ms | decode tok/s | experts/layer "
             "| expert MB/token | TPOT ratio | p90 ratio | tok/s ratio | bytes ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        base = baseline_of(row, rows) if row["arm"] != "baseline" else None
        mb = row["expert_bytes_per_decode_token"]
        experts = row["experts_per_layer"]
        cells = [row["shape"], row["num_layers"], row["arm"], row["kernel"], row["concurrency"],
                 f"{row['tpot_median_ms']:.2f}", f"{row['tpot_p90_ms']:.2f}", f"{row['decode_tokens_per_s']:.0f}",
                 "n/a" if experts is None else f"{experts:.2f}", "n/a" if mb is None else f"{mb / 1e6:.1f}"]
        if base is None:
            cells += ["", "", "", ""]
        else:
            cells += [ratio(row["tpot_median_ms"], base["tpot_median_ms"]), ratio(row["tpot_p90_ms"], base["tpot_p90_ms"]),
                      ratio(row["decode_tokens_per_s"], base["decode_tokens_per_s"]),
                      ratio(mb, base["expert_bytes_per_decode_token"])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def targets(rows: list[dict]) -> list[str]:
    lines = ["| target | measured | met |", "|---|---|---|"]
    for (shape, concurrency, arm), limit in TARGETS.items():
        for row in rows:
            if (row["shape"], row["concurrency"], row["arm"]) != (shape, concurrency, arm):
                continue
            base = baseline_of(row, rows)
            if base is None:
                continue
            value = row["tpot_median_ms"] / base["tpot_median_ms"]
            lines.append(f"| {shape} ({row['num_layers']} layers) c={concurrency} {arm} [{row['kernel']}]: TPOT ratio "
                         f"<= {limit} | {value:.3f} | {'yes' if value <= limit else 'no'} |")
    for row in rows:
        base = baseline_of(row, rows)
        if row["concurrency"] == 1 and row["arm"] != "baseline" and base is not None:
            value = row["tpot_median_ms"] / base["tpot_median_ms"]
            lines.append(f"| {row['shape']} c=1 {row['arm']} [{row['kernel']}]: within 3 % of baseline | {value:.3f} "
                         f"| {'yes' if value <= SINGLE_ROW_TOLERANCE else 'no'} |")
    return lines


def profile_table(records: list[dict]) -> list[str]:
    """ms per decode step by category, one row per profiled server."""
    profiles = [(r["rows"][0]["shape"] if r["rows"] else "?", p) for r in records for p in r.get("profiles", [])]
    if not profiles:
        return []
    categories = [name for name, _ in CATEGORIES] + [OTHER, IDLE]
    lines = ["| shape | layers | arm | kernel | c | steps (batch) | ms per step | " + " | ".join(categories) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * len(categories)]
    for shape, p in profiles:
        head = f"| {shape} | {p.get('num_layers', '')} | {p['arm']} | {p['kernel']} | {p.get('concurrency', '')} |"
        if "ms_per_step" in p:
            cells = [f"{p['steps_recorded']} ({', '.join(map(str, p['batch_sizes']))})", f"{p['step_ms']:.2f}",
                     *(f"{p['ms_per_step'].get(c, 0.0):.2f}" for c in categories)]  # fmt: skip
        else:
            cells = [f"failed: {p.get('error', 'no figures')}", *[""] * (len(categories) + 1)]
        lines.append(head + " " + " | ".join(cells) + " |")
    return ["Where a decode step's time goes (bench serve --profile): ms per step by category, from SGLang's "
            "profiler (idle: no kernel running on a GPU; on a CPU, time in no operator):", "", *lines]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("records", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="write the merged record here")
    args = parser.parse_args(argv)
    try:
        records = [read_record(path, ("device", "commit", "command", "rows"), "a bench serve record")
                   for path in args.records]
        merged = merge(records)
    except RecordError as error:
        print(f"serve_gpu_report.py: {error}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(merged, indent=1) + "\n")
    print(f"device: {merged['device']}; commit: {merged['commit']}\n")
    print("\n".join(table(merged["rows"])))
    print("\n" + "\n".join(targets(merged["rows"])))
    if profiles := profile_table(records):
        print("\n" + "\n".join(profiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
