"""The measurements file of a run (`measurements.jsonl` in --out): a configuration line, then one line
per finished block (one arm, one concurrency level, one slice of the items), appended and flushed as
soon as the block ends. A run that dies keeps every finished block; `--resume` continues from them."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

MEASUREMENTS = "measurements.jsonl"

# Settings that change what a block measures; a resumed run must match them exactly.
MEASURED_SETTINGS = ("items", "task", "seed", "score", "endpoint", "max_tokens", "blocks", "model", "url_mode")


class ResumeError(ValueError):
    pass


@dataclass
class Block:
    concurrency: int
    arm: str  # the arm's label
    block: int
    first_item: int  # items [first_item, first_item + len(correct)) of the item list
    correct: list[bool]
    completions: list[str]
    tokens: list[int]
    ttft_ms: list[float]
    tpot_ms: list[float | None]
    e2e_ms: list[float]
    wall_s: float
    stats: dict  # the server's /lynx/stats for this block alone (reset before it)

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.concurrency, self.arm, self.block)

    def to_line(self) -> str:
        data = asdict(self)
        for name in ("ttft_ms", "tpot_ms", "e2e_ms"):
            data[name] = [None if v is None else round(v, 3) for v in data[name]]
        data["correct"] = "".join("1" if ok else "0" for ok in self.correct)
        return json.dumps({"kind": "block", **data}, separators=(",", ":"))

    @classmethod
    def from_json(cls, data: dict) -> "Block":
        data = {k: v for k, v in data.items() if k != "kind"}
        data["correct"] = [c == "1" for c in data["correct"]]
        return cls(**data)


def compact_stats(stats: dict) -> dict:
    """The parts of /lynx/stats that add up across blocks (per layer) plus the step counters."""
    layer_keys = ("layer", "num_experts", "top_k", "expert_bytes", "steps", "decode_tokens", "distinct_experts_before",
                  "distinct_experts_after", "tokens_rerouted", "router_mass_dropped", "fallbacks")
    return {
        **{k: stats.get(k) for k in ("policy", "params", "budget", "decode_steps", "pruned_steps", "fallback_steps",
                                     "passthrough_steps", "policy_failures")},
        "layers": [{k: layer.get(k) for k in layer_keys} for layer in stats.get("layers", [])],
        **({"expert_cache": compact_cache_stats(stats["expert_cache"])} if stats.get("expert_cache") else {}),
    }


def compact_cache_stats(cache: dict) -> dict:
    """The expert cache's counts that add up across blocks (a server started with --lynx-expert-cache)."""
    keys = ("layer", "cache_hits", "cache_misses", "decode_misses", "decode_prefetched", "decode_tokens")
    return {"policy": cache.get("policy"), "layers": [{k: layer.get(k) for k in keys} for layer in cache["layers"]]}


class MeasurementStore:
    def __init__(self, out_dir: Path):
        self.path = out_dir / MEASUREMENTS
        self._planned: tuple[dict, list[Block]] | None = None  # begin()'s, written with the first new block
        self.started = False  # whether this run has written the file

    def plan(self, config: dict, *, resume: bool) -> tuple[dict, list[Block]]:
        """(the file's first line, the blocks kept): (resume) the saved ones, else `config` and none. Reads
        only, so a run refused after this (a server out of reach) leaves an earlier run's file as it was."""
        if resume and self.path.exists():
            saved, blocks = self.load()
            check_same_settings(saved, config)
            return saved, blocks
        return {"kind": "config", **config}, []

    def begin(self, header: dict, blocks: list[Block]) -> None:
        """The planned start, written with the first new block (for a resumed run this drops a line a
        crash cut short, so appends stay parseable): a run that measures nothing, its arm refused by the
        server or interrupted at once, leaves an earlier run's file in --out as it was."""
        self._planned = (header, blocks)

    def load(self) -> tuple[dict, list[Block]]:
        lines = self.path.read_text().splitlines()
        if not lines:
            raise ResumeError(f"{self.path} is empty")
        try:
            config = json.loads(lines[0])
        except json.JSONDecodeError:
            config = None
        if not isinstance(config, dict) or config.get("kind") != "config":
            raise ResumeError(f"cannot resume: the first line of {self.path} is not a run's settings (cut short, or "
                              "not this tool's file); run without --resume, or with another --out")
        blocks = []
        for line in lines[1:]:
            try:
                blocks.append(Block.from_json(json.loads(line)))
            except (json.JSONDecodeError, TypeError, KeyError):
                break  # a line cut short by a crash: that block is measured again
        return config, blocks

    def _rewrite(self, config: dict, blocks: list[Block]) -> None:
        lines = [json.dumps(config)] + [block.to_line() for block in blocks]
        self.path.write_text("\n".join(lines) + "\n")

    def append(self, block: Block) -> None:
        if not self.started:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite(*self._planned)
            self.started = True
        with open(self.path, "a") as f:
            f.write(block.to_line() + "\n")
            f.flush()
            os.fsync(f.fileno())


# The flags the item list follows: a change of items is told by them, not by the lists (kilobytes).
ITEM_FLAGS = ("task", "n", "seed")


def check_same_settings(saved: dict, config: dict) -> None:
    for key in MEASURED_SETTINGS:
        if saved.get(key) == config.get(key):
            continue
        if key == "items":
            raise ResumeError(f"cannot resume: the items differ from the saved run's ({items_change(saved, config)}); "
                              "use the same flags, or another --out")
        raise ResumeError(f"cannot resume: {key} was {saved.get(key)!r} in the saved run, now {config.get(key)!r}; "
                          "use the same flags, or another --out")


def items_change(saved: dict, config: dict) -> str:
    """Which of --n, --seed and --task changed the items, with the values; else the task's content."""
    changed = [f"{key} was {saved.get(key)!r}, now {config.get(key)!r}" for key in ITEM_FLAGS
               if key in saved and saved.get(key) != config.get(key)]
    if changed:
        return "--n, --seed or --task changed: " + "; ".join(changed)
    return f"same --n, --seed and --task, but the task's items changed ({len(saved['items'])} saved, " \
           f"{len(config['items'])} now)"
