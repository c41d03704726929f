"""One core set per rank for SGLang's CPU engine (`SGLANG_CPU_OMP_THREADS_BIND`): dp x tp x pp ranks.

Left unset, SGLang gives each rank a whole NUMA node and asserts that there are at least as many
nodes as ranks (`numa_utils.init_threads_binding`): on a one-node machine `--tp 2` or `--dp-size 2`
stops there. Set, it must hold one `|`-separated core set per rank; rank r takes entry r. SGLang
applies a set only through the AMX build of sgl-kernel (`init_cpu_threads_env`: one OpenMP thread
pinned to each core of the set, which then overrides OMP_NUM_THREADS); without it (the plain-torch
stand-in of this CPU path) the value is checked against the rank count and logged, and every
process keeps the OMP_NUM_THREADS it was started with.
"""

from __future__ import annotations

import os
from pathlib import Path

BIND_ENV = "SGLANG_CPU_OMP_THREADS_BIND"
SYSFS_CPUS = Path("/sys/devices/system/cpu")


def parse_cpu_list(text: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5] (the kernel's and numactl's cpu list format)."""
    cpus = []
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def format_cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5': runs of consecutive cores as ranges, in the given order."""
    runs: list[list[int]] = []
    for cpu in cpus:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def usable_cores(allowed=None, sysfs: Path = SYSFS_CPUS) -> list[int]:
    """The CPUs this process may run on, one per physical core (the first of its SMT siblings), as
    SGLang's own NUMA default counts them: two ranks on the two threads of one core would share it."""
    allowed = sorted(os.sched_getaffinity(0) if allowed is None else allowed)
    cores, seen = [], set()
    for cpu in allowed:
        try:
            siblings = frozenset(parse_cpu_list((sysfs / f"cpu{cpu}/topology/thread_siblings_list").read_text()))
        except (OSError, ValueError):
            siblings = frozenset((cpu,))
        if siblings not in seen:
            seen.add(siblings)
            cores.append(cpu)
    return cores


def threads_bind(tp_size: int, cores: list[int]) -> str:
    """SGLang's per-rank core sets: `cores` split into `tp_size` contiguous groups whose sizes differ by
    at most one (larger groups first), e.g. '0|1' for 2 ranks on cores [0, 1]. With fewer cores than
    ranks, rank r takes core r mod len(cores): ranks share cores (SGLang accepts that; each rank is
    slower, but it runs)."""
    if tp_size < 1 or not cores:
        raise ValueError(f"need at least one rank and one core (tp {tp_size}, cores {cores})")
    if tp_size > len(cores):
        return "|".join(str(cores[rank % len(cores)]) for rank in range(tp_size))
    size, extra = divmod(len(cores), tp_size)
    groups, start = [], 0
    for rank in range(tp_size):
        end = start + size + (1 if rank < extra else 0)
        groups.append(format_cpu_list(cores[start:end]))
        start = end
    return "|".join(groups)


# SGLang's CPU ranks are dp x tp x pp, one core set each: (setting, flag, what its value counts).
RANK_SETTINGS = (("tp_size", "--tp", "tensor-parallel ranks"), ("dp_size", "--dp-size", "data-parallel replicas"),
                 ("pp_size", "--pp-size", "pipeline stages"))  # fmt: skip


def rank_count(sizes: dict[str, str | None]) -> int:
    """The ranks SGLang's CPU engine starts, from the RANK_SETTINGS values given (None: not given)."""
    ranks = 1
    for name, flag, counts in RANK_SETTINGS:
        value = sizes.get(name)
        if value is None:
            continue
        size = int(value) if value.strip().isdigit() else 0
        if size < 1:
            raise ValueError(f"{flag} {value!r} is not a positive integer (the number of {counts})")
        ranks *= size
    return ranks


def default_bind_env(sizes: dict[str, str | None], given: str | None, cores: list[int] | None = None) -> dict[str, str]:
    """What `lynx-sglang serve` adds to SGLang's environment for the parallel `sizes` given (by
    RANK_SETTINGS name): {} with one rank or when the user set the variable (checked: one core set per
    rank), else one core set per rank. Raises ValueError with the one line to show for a bad size or a
    too-short user value."""
    ranks = rank_count(sizes)
    if given:
        if len(given.split("|")) < ranks:
            spelled = " ".join(f"{flag} {sizes[name]}" for name, flag, _ in RANK_SETTINGS if sizes.get(name))
            raise ValueError(
                f"{BIND_ENV}={given!r} holds {len(given.split('|'))} core set(s), but {spelled} needs one per "
                f"rank ({ranks}), separated by '|' (e.g. {threads_bind(ranks, usable_cores())!r}); or unset it "
                "for that default"
            )
        return {}
    if ranks == 1:
        return {}
    return {BIND_ENV: threads_bind(ranks, usable_cores() if cores is None else cores)}


def shared_cores_note(bind: str) -> str | None:
    """A line saying that ranks share cores, when the default had fewer cores than ranks."""
    groups = bind.split("|")
    if len(set(groups)) == len(groups):
        return None
    return (f"{len(groups)} ranks on {len(set(groups))} core(s): ranks share cores "
            f"({BIND_ENV}={bind}); set it to choose others")
