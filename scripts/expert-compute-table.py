"""Turn a `lynx-sglang bench serve --kernels lynx,sglang --record FILE` record into the table that
`--lynx-kernel auto` follows on that device (format: lynx_sglang/scheduler/compute_table.py).

    python scripts/expert-compute-table.py RECORD [--out DIR]

For each concurrency level the record measured, the layer shape gets "lynx" when lynx's kernel had the
lower median TPOT than SGLang's fused MoE for every pruned arm measured with both, else "sglang" (a tie
too): auto never takes a kernel the record shows slower. The shape's dimensions come from the
record's `--shape` (a named shape of lynx_sglang.tiny_checkpoints, with its overrides); the
intermediate size is divided by the served `--tp`. The file for the record's device is written under
DIR (default: the package's kernels/configs), keeping the entries of other shapes already there.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from lynx_sglang.kernels.configs import CONFIG_DIR, config_path
from lynx_sglang.scheduler.compute_table import KERNEL_KIND, ComputeTable, LayerShape
from lynx_sglang.sglang_settings import FlagSettings
from lynx_sglang.tiny_checkpoints import NAMED_SHAPES, ShapeError, parse_shape
from lynx_sglang.tools.records import RecordError, read_record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="expert-compute-table.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("record", type=Path)
    parser.add_argument("--out", type=Path, default=CONFIG_DIR, help="folder of the table files")
    args = parser.parse_args(argv)
    try:
        record = read_record(args.record, ("device", "command", "rows"), "a bench serve record")
        device = device_file_name(record["device"])
        shape = layer_shape(record["command"])
        bands = faster_kernels(record["rows"])
        path = write_table(args.out, device, shape, bands)
    except (RecordError, ValueError) as error:
        print(f"expert-compute-table: {error}", file=sys.stderr)
        return 2
    print(f"{path}: {shape.key}: " + ", ".join(f"{rows} rows -> {kernel}" for rows, kernel in bands))
    return 0


def device_file_name(device) -> str:
    if not isinstance(device, str) or not device or device.startswith("CPU"):
        raise RecordError(f"device {device!r}: tables are per CUDA device; this record was not measured on one")
    return device.replace(" ", "_")


def layer_shape(command) -> LayerShape:
    """The MoE layer shape one rank computed in the recorded run."""
    flags = FlagSettings(shlex.split(command) if isinstance(command, str) else [])
    shape_text = flags.value("shape")
    if shape_text is None:
        raise RecordError(f"command {command!r} has no --shape: only named shapes "
                          f"({', '.join(NAMED_SHAPES)}) have known layer dimensions")
    try:
        name, overrides = parse_shape(shape_text, {})
    except ShapeError as error:
        raise RecordError(str(error)) from None
    if name is None:
        raise RecordError(f"--shape {shape_text!r} names no shape ({', '.join(NAMED_SHAPES)})")
    fields = {**NAMED_SHAPES[name], **overrides}
    tp_text = flags.value("tp_size") or "1"
    if not tp_text.isdigit() or int(tp_text) < 1:
        raise RecordError(f"--tp {tp_text!r} in the command is not a positive integer")
    tp = int(tp_text)
    intermediate = fields.get("moe_intermediate_size") or fields["intermediate_size"]
    if intermediate % tp:
        raise RecordError(f"--tp {tp}: the expert intermediate size {intermediate} does not split in {tp}")
    experts = fields.get("num_local_experts") or fields["num_experts"]
    return LayerShape(experts, fields["hidden_size"], intermediate // tp, fields["num_experts_per_tok"],
                      fields.get("dtype", "bfloat16"))  # fmt: skip


def faster_kernels(rows) -> list[tuple[int, str]]:
    """[(concurrency, "lynx" or "sglang")] for every concurrency with both kernels measured."""
    tpot: dict[tuple[int, str], dict[str, float]] = {}
    for row in rows if isinstance(rows, list) else []:
        try:
            arm, kernel, level, ms = row["arm"], row["kernel"], int(row["concurrency"]), float(row["tpot_median_ms"])
        except (KeyError, TypeError, ValueError):
            raise RecordError(f"row {row!r}: needs arm, kernel, concurrency and tpot_median_ms") from None
        if arm != "baseline" and kernel in ("lynx", "sglang"):
            tpot.setdefault((level, arm), {})[kernel] = ms
    pairs = {key: kernels for key, kernels in tpot.items() if len(kernels) == 2}
    if not pairs:
        raise RecordError("no pruned arm was measured with both --kernels lynx and sglang at one concurrency")
    levels = sorted({level for level, _ in pairs})
    return [(level, "lynx" if all(k["lynx"] < k["sglang"] for (lv, _), k in pairs.items() if lv == level)
             else "sglang") for level in levels]


def write_table(folder: Path, device: str, shape: LayerShape, bands: list[tuple[int, str]]) -> Path:
    path = folder / config_path(KERNEL_KIND, device).name
    table = ComputeTable.parse(json.loads(path.read_text()), str(path)) if path.exists() else ComputeTable({})
    table.by_shape[shape.key] = bands
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table.to_json(), indent=2) + "\n")
    return path


if __name__ == "__main__":
    raise SystemExit(main())
