"""Block sizes and warps of the fused routing's two launches: functions of the shapes and the device only,
so capture and replay launch the same grids. Measured configurations are data, one file per shape
family and device (kernels/configs/routing_launch,E=<BLOCK_E>,device_name=<name>.json, keyed by T
rounded up to a power of two); a shape or device without one gets `heuristic_launch_config`.
`python -m lynx_sglang.tools.launch_sweep` times alternatives on a GPU."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from ..configs import config_path, device_name, load_device_config
from ..triton_shared import INTERPRETING, block_sizes, next_pow2, warps_for
from .rules import MASS_BITS, BudgetRule, CoverageRule, LynxRule, TopNRule

KIND = "routing_launch"
# Rows per program of the default launches under Triton's interpreter (tests/policies/test_policy_fused.py:
# 188 s on 2 cores at 4 rows, 63 s at 16).
INTERPRETER_BLOCK_T = 16


class LaunchConfig(NamedTuple):
    block_t: int  # rows per program, both launches (the grid is cdiv(T, block_t))
    scan_t: int  # rows per step of launch 2's loops over every row
    rows_warps: int
    decide_warps: int
    chunk: int  # experts per step of launch 2's O(E^2) rankings
    parts: int  # launch-1 programs whose partial sums launch 2 loads at once
    picks: int = 0  # lynx's picks: 0 gathered in batch order + prefix count, 1 contiguous + rank cut, 2 bit masks
    sort: bool = False  # launch 2 orders experts by bitonic sorts where the keys fit (sort_fits), not O(E^2) counting


TUNED_FIELDS = ("block_t", "scan_t", "rows_warps", "decide_warps", "chunk", "picks", "sort")  # `parts` follows


def parts_per_load(programs: int) -> int:
    """Launch-1 programs whose partial sums launch 2 loads at once: all of them, up to 64 (a tile of
    64 x E; more would cost registers)."""
    return min(64, next_pow2(programs))


def heuristic_launch_config(num_rows: int, num_experts: int, top_k: int, block_t: int | None = None) -> LaunchConfig:
    """What the H100 sweeps (docs/benchmarks/policies-gpu.md) taught, for shapes and devices without a
    measured file. Rows per program trade the two launches: a program's per-expert sums over its rows
    cross warps in launch 1, while each program of launch 2 adds every launch-1 program's partials. So
    one row per program up to 32 programs at E <= 64 and 64 above, then 4 rows; launch 2 runs 2 warps
    at one row per program up to E 128, else 4, and goes over every row about 2048-4096 logits at a
    time; lynx picks from bit masks, and launch 2 sorts where the keys fit. `block_t` sets the rows per
    program instead (the rest follows from it)."""
    block_e, _ = block_sizes(num_experts, top_k)
    rows = next_pow2(num_rows)
    if block_t is None:
        block_t = 1 if rows <= (64 if block_e > 64 else 32) else 4
    scan_t = max(block_t, min(rows, 64 if block_e <= 64 else 2048 // block_e))
    rows_warps = 1 if block_t == 1 else warps_for(block_t * block_e)
    decide_warps = warps_for(scan_t * block_e, most=2 if block_t == 1 and block_e <= 128 else 4)
    parts = parts_per_load(-(-num_rows // block_t))
    return LaunchConfig(block_t, scan_t, rows_warps, decide_warps, min(block_e, 32), parts, picks=2, sort=True)


@functools.cache
def tuned_launch_configs(block_e: int, device: str | None) -> dict[int, dict] | None:
    """The measured configurations of a shape family on `device` (by T rounded up to a power of two),
    or None without a file. A file with a wrong entry is an error naming it."""
    table = load_device_config(f"{KIND},E={block_e}", device)
    if table is None:
        return None
    tuned = {}
    for rows, fields in table.items():
        if not rows.isdigit() or not isinstance(fields, dict) or set(fields) != set(TUNED_FIELDS):
            path = config_path(f"{KIND},E={block_e}", device)
            raise ValueError(f"{path}: entry {rows!r} must be a T with exactly the fields {', '.join(TUNED_FIELDS)}")
        tuned[int(rows)] = fields
    return tuned


def launch_config(num_rows: int, num_experts: int, top_k: int, device: str | None = None) -> LaunchConfig:
    """The configuration measured on `device` (a name from configs.device_name()) for this shape, or the
    heuristic's."""
    block_e, _ = block_sizes(num_experts, top_k)
    fields = (tuned_launch_configs(block_e, device) or {}).get(next_pow2(num_rows))
    if fields is None:
        return heuristic_launch_config(num_rows, num_experts, top_k)
    return LaunchConfig(**fields, parts=parts_per_load(-(-num_rows // fields["block_t"])))


@functools.cache
def _device_name_of(device: torch.device) -> str | None:
    return device_name(device) if device.type == "cuda" else None


@functools.lru_cache(maxsize=1024)
def default_launch_config(num_rows: int, num_experts: int, top_k: int, device: torch.device) -> LaunchConfig:
    """What `plan_triton` launches without a config: `launch_config` on the tensors' device (looked up
    once per shape), but under Triton's interpreter, which runs the programs one after another while
    each program of launch 2 makes the whole batch decision again, fewer and larger programs (every
    configuration routes alike: tests/policies/test_policy_launch_sweep.py)."""
    if INTERPRETING:
        return heuristic_launch_config(num_rows, num_experts, top_k, min(INTERPRETER_BLOCK_T, next_pow2(num_rows)))
    return launch_config(num_rows, num_experts, top_k, _device_name_of(device))


def bits_rows(num_rows: int, warps: int) -> int:
    """Rows per step of lynx's binary searches (picks = 2): two per thread; a row is a few words."""
    return min(next_pow2(num_rows), 64 * warps)


def sort_fits(largest_key: int, block_e: int) -> bool:
    """Whether keys up to `largest_key` fit launch 2's sort words (triton_order.sort_keys: the key above
    two fields of log2(BLOCK_E) bits, in a signed int64)."""
    return 0 <= largest_key < 1 << (63 - 2 * (block_e.bit_length() - 1))


def _largest_preference_key(num_rows: int) -> int:
    """The preference key is mass * (T + 1) + votes; an expert's mass is at most T << MASS_BITS."""
    return (num_rows << MASS_BITS) * (num_rows + 1) + num_rows


def rule_sorts(rule, num_rows: int, block_e: int, config: LaunchConfig) -> bool:
    """Whether launch 2 finds the rule's own order by sorts (SORT_RULE) rather than O(E^2) counting,
    where the keys fit: the preference key (budget, coverage; lynx's mass tie-break), topn's
    votes * (T << MASS_BITS + 1) + mass, lynx's batch vote S <= T**(beta+1) (B = voters <= T, each
    voter's digits sum to B). lynx sorts only for its bit-mask picks (the others read ranks)."""
    if not config.sort:
        return False
    preference, mass = _largest_preference_key(num_rows), num_rows << MASS_BITS
    if isinstance(rule, LynxRule):
        if config.picks != 2:
            return False
        largest = max(num_rows ** (rule.beta + 1), preference if rule.tie_by_mass else 0)
    elif isinstance(rule, (BudgetRule, CoverageRule)):
        largest = preference
    elif isinstance(rule, TopNRule):
        largest = num_rows * (mass + 1) + mass
    else:
        return False
    return sort_fits(largest, block_e)


def top_up_sorts(num_rows: int, block_e: int, config: LaunchConfig) -> bool:
    """Whether the top-up to k experts takes its order from a sort (SORT_TOP_UP): active * (T + 1) + votes."""
    return config.sort and sort_fits(2 * num_rows + 1, block_e)


def cap_sorts(num_rows: int, block_e: int, config: LaunchConfig) -> bool:
    """Whether a budget cap (ExpertBudget) walks the preference order from a sort (SORT_CAP)."""
    return config.sort and sort_fits(_largest_preference_key(num_rows), block_e)
