"""Runs the arms of an experiment on one server, interleaved in blocks.

Each concurrency level splits the items into `blocks` slices; every slice is sent under every arm
before the next slice starts, and the order of the arms rotates from slice to slice (A B, B A, A B,
... for two arms). Machine drift over a run then falls on every arm alike. Before each block the
server is switched to the arm and its stats are reset, so each block's /lynx/stats is that arm's alone.
"""

from __future__ import annotations

import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .arms import Arm
from .client import AdminClient, ArmRefused, Completion, ServerError, stream_completion
from .launch import ManagedServer
from .store import Block, MeasurementStore, compact_stats
from .tasks import Item, Scorer


@dataclass(frozen=True)
class PlannedBlock:
    """One arm's slice of the items at one concurrency level, in the order the run measures them."""

    concurrency: int
    block: int
    first_item: int
    count: int
    arm: Arm

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.concurrency, self.arm.label, self.block)


def block_slices(count: int, blocks: int) -> list[tuple[int, int]]:
    """(first, size) of `blocks` contiguous, nearly equal slices of `count` items."""
    blocks = max(1, min(blocks, count))
    base, extra = divmod(count, blocks)
    slices, first = [], 0
    for i in range(blocks):
        size = base + (1 if i < extra else 0)
        slices.append((first, size))
        first += size
    return slices


def plan_blocks(arms: list[Arm], levels: list[int], count: int, blocks: int) -> list[PlannedBlock]:
    steps = []
    for concurrency in levels:
        for index, (first, size) in enumerate(block_slices(count, blocks)):
            shift = index % len(arms)
            for arm in arms[shift:] + arms[:shift]:
                steps.append(PlannedBlock(concurrency, index, first, size, arm))
    return steps


class Runner:
    def __init__(self, *, url: str, admin: AdminClient, items: list[Item], scorer: Scorer, endpoint: str,
                 max_tokens: int, store: MeasurementStore, server: ManagedServer | None = None,
                 console: Console | None = None, skip_refused: bool = False, reference: str | None = None):
        self.url = url
        self.admin = admin
        self.items = items
        self.scorer = scorer
        self.endpoint = endpoint
        self.max_tokens = max_tokens
        self.store = store
        self.server = server
        self.console = console or Console(stderr=True)
        # With skip_refused, an arm the server refuses (HTTP 400: the setting does not fit the model) is
        # reported and skipped and the other arms still run; without it the refusal ends the run.
        self.skip_refused = skip_refused
        self.reference = reference  # with skip_refused: the arm every other is compared with, never skipped
        self.refused: dict[str, str] = {}  # arm label -> the server's reason

    def run(self, steps: list[PlannedBlock], done: list[Block]) -> None:
        """Measure every step not in `done`, each block appended to the store as it ends, so a
        ServerError or KeyboardInterrupt that propagates loses no finished block."""
        finished = {block.key for block in done}
        todo = [step for step in steps if step.key not in finished]
        self.check_arms(todo, measured={block.arm for block in done})
        warmed: set[int] = set()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task("requests", total=sum(step.count for step in todo))
            for step in todo:
                if step.arm.label in self.refused:
                    progress.advance(task, step.count)
                    continue
                try:
                    if step.concurrency not in warmed:
                        self.warm_up(step)
                        warmed.add(step.concurrency)
                    progress.update(task, description=f"c={step.concurrency} block {step.block + 1} {step.arm.label}")
                    self.store.append(self.measure(step, lambda: progress.advance(task)))
                except ArmRefused as error:  # accepted by check_arms, refused now (the server changed)
                    self.skip(step.arm.label, error)
                    progress.advance(task, step.count)

    def check_arms(self, steps: list[PlannedBlock], measured: set[str] = frozenset()) -> None:
        """Put the server in each arm's setting once before measuring anything, so that a setting it
        refuses (an unknown policy, a parameter out of range for this model) ends the run, or is
        skipped, in seconds rather than after the blocks of the arms before it. measured: the labels of
        arms a resumed run holds blocks of (they count as compared, though none of their steps is left)."""
        arms = {step.arm.label: step.arm for step in steps}
        for label, arm in arms.items():
            try:
                self.admin.switch(arm)
            except ArmRefused as error:
                if self.skip_refused and label == self.reference:
                    raise ArmRefused(f"the reference {error}") from None
                self.skip(label, error)
        if self.skip_refused and self.refused and (set(arms) | measured) - set(self.refused) <= {self.reference}:
            raise ArmRefused(f"the server refused every arm to compare with {self.reference}; see above")

    def skip(self, label: str, error: ArmRefused) -> None:
        """An arm the server refused: skipped and said (skip_refused), else the end of the run."""
        if not self.skip_refused:
            raise error
        self.refused[label] = str(error)
        self.console.print(f"skipped: {error}", style="yellow", markup=False, soft_wrap=True)

    def warm_up(self, step: PlannedBlock) -> None:
        """A batch at this level's concurrency before measuring it (not recorded)."""
        self.admin.switch(step.arm)
        self.send_all(self.items[: step.concurrency], step.concurrency, f"warm-up at c={step.concurrency}")

    def measure(self, step: PlannedBlock, on_done) -> Block:
        self.admin.switch(step.arm)
        self.admin.reset_stats()
        items = self.items[step.first_item: step.first_item + step.count]
        started = time.perf_counter()
        completions = self.send_all(items, step.concurrency, f"arm {step.arm.label} at c={step.concurrency}", on_done)
        wall = time.perf_counter() - started
        stats = compact_stats(self.admin.stats())
        return Block(
            concurrency=step.concurrency, arm=step.arm.label, block=step.block, first_item=step.first_item,
            correct=[self.scorer(c.text, item.answer) for c, item in zip(completions, items)],
            completions=[c.text for c in completions], tokens=[c.tokens for c in completions],
            ttft_ms=[c.ttft_ms for c in completions], tpot_ms=[c.tpot_ms for c in completions],
            e2e_ms=[c.e2e_ms for c in completions], wall_s=wall, stats=stats,
        )

    def send_all(self, items: list[Item], concurrency: int, what: str, on_done=None) -> list[Completion]:
        """Every item's completion, in item order, with `concurrency` requests in flight."""
        results: list[Completion | None] = [None] * len(items)
        pool = ThreadPoolExecutor(max_workers=concurrency)
        try:
            futures = {pool.submit(self.send_one, item.prompt): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                results[futures[future]] = self.result_or_error(future, what)
                if on_done:
                    on_done()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return results

    def send_one(self, prompt: str) -> Completion:
        return stream_completion(self.url, prompt, endpoint=self.endpoint, max_tokens=self.max_tokens,
                                 api_key=self.admin.api_key)

    def result_or_error(self, future, what: str) -> Completion:
        try:
            return future.result()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            raise ServerError(f"{what}: the server answered HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
            raise ServerError(self.lost_server_message(what, getattr(error, "reason", error))) from None

    def lost_server_message(self, what: str, reason) -> str:
        # Only a lost connection waits here (ManagedServer.exited_within), and the run ends after it anyway.
        if self.server is not None and self.server.exited_within():
            return (f"the server died during {what} (exit code {self.server.process.returncode}; "
                    f"log: {self.server.log_path}):\n{self.server.log_tail()}")
        return f"lost the server at {self.url} during {what} ({reason})"
