"""Figures of `lynx-sglang bench serve`: one result per (arm, kernel, concurrency), the ratios to
baseline, the printed table, and the record file (a fixed schema, written after every level)."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .models import BenchError

RECORD_FIELDS = ("shape", "num_layers", "arm", "kernel", "concurrency", "tpot_median_ms", "tpot_p90_ms",
                 "decode_tokens_per_s", "experts_per_layer", "expert_bytes_per_decode_token")  # fmt: skip
BORROWED_NOTE = ("baseline runs with --lynx-stats off: its experts/layer and expert bytes are the pruned arms' "
                 "'before' figures at the same concurrency (what the model's own routing read in those batches)")


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, as numpy.percentile (and so sglang.bench_serving)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Result:
    arm: str  # the --arms spec text
    kernel: str  # the --lynx-kernel value; `sglang` for baseline
    baseline: bool
    concurrency: int
    requests: int
    output_tokens: int
    seconds: float
    tpot_ms: list[float] = field(repr=False)
    stats: dict | None = None  # /lynx/stats after the level; None for baseline (no bookkeeping)
    compute: str | None = None  # what computed the pruned steps (compute_summary); None for baseline

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def tpot_median(self) -> float:
        return percentile(self.tpot_ms, 50)

    @property
    def tpot_p90(self) -> float:
        return percentile(self.tpot_ms, 90)

    def measured(self, when: str) -> tuple[float | None, float | None]:
        """(distinct experts per layer, expert bytes per decode token) `before` or `after` the policy."""
        if self.stats is None:
            return None, None
        return self.stats[f"distinct_experts_{when}"], self.stats[f"expert_bytes_per_decode_token_{when}"]


def compute_summary(expert_compute: dict[str, str]) -> str | None:
    """GET /lynx/policy's `expert_compute` (layer: what computes its pruned decode steps) in a few words.
    It can differ from --lynx-kernel: a layer lynx's kernel cannot compute (expert biases, quantized
    weights) keeps SGLang's compute, and `auto` picks per layer and batch."""
    counts = Counter(expert_compute.values())
    if len(counts) <= 1:
        return next(iter(counts), None)
    return "; ".join(f"{name} on {count} layer{'s' * (count > 1)}" for name, count in counts.most_common())


def expert_figures(result: Result, results: list[Result]) -> tuple[float | None, float | None]:
    """A pruned arm's own figures; for baseline the mean 'before' figures of the pruned servers at the
    same concurrency, or (None, None) when there is none yet."""
    if not result.baseline:
        return result.measured("after")
    before = [r.measured("before") for r in results if not r.baseline and r.concurrency == result.concurrency]
    before = [pair for pair in before if pair[0] is not None]
    if not before:
        return None, None
    return sum(e for e, _ in before) / len(before), sum(b for _, b in before) / len(before)


def ratios(result: Result, results: list[Result]) -> dict | None:
    """Each figure over baseline's at the same concurrency; None for baseline or without one."""
    base = next((r for r in results if r.baseline and r.concurrency == result.concurrency), None)
    if result.baseline or base is None:
        return None
    own_bytes, base_bytes = expert_figures(result, results)[1], expert_figures(base, results)[1]
    return {
        "tpot_median": result.tpot_median / base.tpot_median,
        "tpot_p90": result.tpot_p90 / base.tpot_p90,
        "decode_tokens_per_s": result.tokens_per_s / base.tokens_per_s,
        "expert_bytes_per_decode_token": own_bytes / base_bytes if own_bytes is not None and base_bytes else None,
    }


def record_rows(results: list[Result], model) -> list[dict]:
    rows = []
    for r in results:
        experts, expert_bytes = expert_figures(r, results)
        values = (model.name, model.num_layers, r.arm, r.kernel, r.concurrency, r.tpot_median, r.tpot_p90,
                  r.tokens_per_s, experts, expert_bytes)  # fmt: skip
        rows.append(dict(zip(RECORD_FIELDS, values)))
    return rows


def result_json(results: list[Result]) -> list[dict]:
    """--json: the record's figures plus the before-figures, where baseline's came from, and the ratios."""
    out = []
    for r in results:
        experts, expert_bytes = expert_figures(r, results)
        before = r.measured("before")
        out.append({
            "arm": r.arm, "kernel": r.kernel, "concurrency": r.concurrency, "requests": r.requests,
            "decode_tokens_per_s": r.tokens_per_s, "tpot_median_ms": r.tpot_median, "tpot_p90_ms": r.tpot_p90,
            "distinct_experts_per_layer": experts, "expert_bytes_per_decode_token": expert_bytes,
            "distinct_experts_per_layer_before": before[0], "expert_bytes_per_decode_token_before": before[1],
            "expert_figures_from": ("pruned arms' before-figures" if experts is not None else None)
            if r.baseline else "own server",
            "ratios_to_baseline": ratios(r, results), "expert_compute": r.compute,
        })  # fmt: skip
    return out


def git_commit() -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=30)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return os.environ.get("LYNX_COMMIT") or None


class Record:
    """`--record FILE`: {device, commit, command, rows}, rewritten whole after every level (through a
    temporary file), so a run stopped by a time limit leaves every row it finished."""

    def __init__(self, path: str, device: str, command: str):
        self.path = Path(path)
        self.header = {"device": device, "commit": git_commit(), "command": command}

    def write(self, rows: list[dict], profiles: list[dict] | None = None) -> None:
        extra = {} if profiles is None else {"profiles": profiles}  # bench serve --profile
        write_replacing(self.path, json.dumps({**self.header, "rows": rows, **extra}, indent=2) + "\n", "--record")


def write_replacing(path: Path, text: str, flag: str) -> None:
    """Through a temporary file beside it: a reader never sees half a file."""
    staging = path.with_name(path.name + ".tmp")
    try:
        staging.write_text(text)
        os.replace(staging, path)
    except OSError as exc:
        raise BenchError(f"{flag} {path}: cannot write it ({exc.strerror or exc})") from None


def check_writable(path: str, flag: str) -> None:
    """Before a long run: that `path` can be written as Record.write writes it (a new file beside it,
    then renamed over it), without touching the path itself: a run refused later must leave an earlier
    run's file as it was."""
    target = Path(path)
    if target.is_dir():
        raise BenchError(f"{flag} {path}: is a folder, not a file")
    probe = target.with_name(f".{target.name}.{os.getpid()}.probe")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.unlink(probe)
    except OSError as exc:
        raise BenchError(f"{flag} {path}: cannot write it ({exc.strerror or exc})") from None


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value / scale, spec)


def print_table(results: list[Result]) -> None:
    if not results:
        return
    print(f"\n{'arm':24s} {'kernel':7s} {'conc':>4s} {'decode tok/s':>12s} {'TPOT med ms':>11s} {'TPOT p90 ms':>11s} "
          f"{'experts/layer':>14s} {'expert MB/token':>16s}")
    for r in results:
        experts, expert_bytes = expert_figures(r, results)
        mark = "*" if r.baseline else " "
        print(f"{r.arm:24s} {r.kernel:7s} {r.concurrency:4d} {r.tokens_per_s:12.1f} {r.tpot_median:11.1f} "
              f"{r.tpot_p90:11.1f} {_fmt(experts, '13.2f'):>13s}{mark} {_fmt(expert_bytes, '15.1f', 1e6):>15s}{mark}")
    if any(r.baseline for r in results):
        print(f"* {BORROWED_NOTE}; n/a: no pruned arm ran at that concurrency")
    computes = {(r.arm, r.kernel): r.compute for r in results if r.compute is not None}
    if computes:
        print("\nthe kernel column is --lynx-kernel; what computed the pruned decode steps (GET /lynx/policy):")
        for (arm, kernel), compute in computes.items():
            print(f"  {arm:22s} {kernel:7s} {compute}")
    lines = [(r, ratios(r, results)) for r in results]
    lines = [(r, q) for r, q in lines if q is not None]
    if not lines:
        return
    print("\nratios to baseline at the same concurrency (TPOT median, TPOT p90, decode tok/s, expert bytes per token):")
    for r, q in lines:
        print(f"  {r.arm:22s} {r.kernel:7s} c={r.concurrency:<3d} TPOT {q['tpot_median']:.2f}  p90 {q['tpot_p90']:.2f}"
              f"  tok/s {q['decode_tokens_per_s']:.2f}  bytes {_fmt(q['expert_bytes_per_decode_token'], '.2f')}")
