"""The markdown of docs/benchmarks/offload-gpu.md from the `offload` GPU stage's OUTDIR/offload.json:
TPOT and copies per decode token for each arm and batch, against every expert resident and against the
bound the host-to-device bandwidth sets.

    python scripts/offload_gpu_report.py OUT/offload.json > table.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lynx_sglang.tools.records import RecordError, read_record

HEADER = ["arm", "batch", "CUDA graphs", "TPOT median ms", "vs all resident", "misses / decode token",
          "MB copied / decode token", "copy bound ms / step"]


def fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rows(result: dict) -> list[list[str]]:
    resident = {row["batch"]: row["tpot_median_ms"] for row in result["rows"] if row["arm"] == "all resident"}
    out = []
    for row in result["rows"]:
        base = resident.get(row["batch"])
        out.append([row["arm"], str(row["batch"]), "yes" if row["cuda_graphs"] else "no (eager)",
                    fmt(row["tpot_median_ms"]), f"{row['tpot_median_ms'] / base:.2f}x" if base else "-",
                    fmt(row["misses_per_decode_token"]), fmt(row["bytes_copied_per_decode_token"] / 1e6),
                    fmt(row.get("copy_bound_ms"))])
    return out


def markdown(result: dict) -> str:
    bandwidth = result.get("bandwidth") or {}
    lines = [f"device: {result.get('device')}; commit: {result.get('commit')}; shape: {result.get('shape')}", "",
             f"host-to-device from pinned memory: copy engine {fmt(bandwidth.get('copy_engine_gb_s'))} GB/s, the "
             f"cache's Triton copy kernel {fmt(bandwidth.get('cache_copy_kernel_gb_s'))} GB/s", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(result)]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("result", type=Path)
    args = parser.parse_args(argv)
    try:
        result = read_record(args.result, ("rows",), "an offload stage's result")
    except RecordError as error:
        print(f"offload_gpu_report.py: {error}", file=sys.stderr)
        return 2
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
