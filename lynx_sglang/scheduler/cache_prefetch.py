"""`--lynx-cache-prefetch`: while one cached MoE layer computes, copy in the experts the next one will
likely need (kernels/cache/prefetch.py predicts them from decayed co-activation counts).

At the start of cached layer r's call, from its final routing: wait for r's own prefetch, add the
previous layer's routing of the same tokens and this one's to the counts between them, then issue the
prefetch of layer r + 1: its `min(N, T*k)` likeliest experts. On CUDA the prefetch runs on a side
stream that waits for the step's stream and that layer r + 1 waits for: the copies overlap layer r's
compute and the attention between, and both joins are stream waits, which a CUDA graph captures. On
a CPU it runs in place (no overlap: it only moves copies earlier, and may add some).
"""

from __future__ import annotations

import torch

from lynx_sglang.kernels.cache import CoactivationPredictor, ExpertCache, expert_usage


class CachePrefetch:
    """caches: the cached layers' caches in layer order (the row of each is its index)."""

    def __init__(self, caches: list[ExpertCache], implementation: str):
        self.caches = caches
        self.implementation = implementation
        device = caches[0].slot_w13.device
        self.predictors = [CoactivationPredictor(cache.num_experts, following.num_experts, device)
                           for cache, following in zip(caches, caches[1:])]  # fmt: skip
        self.side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._previous: tuple[int, torch.Tensor] | None = None  # (row, usage) of the last call
        self._in_flight: set[int] = set()  # rows whose prefetch the step's stream has not waited for

    def join(self, row: int) -> None:
        """Make the step's stream wait for layer `row`'s prefetch, if one is in flight (a stream wait:
        graph safe). Before the layer reads its maps: its routing (a cache-aware policy) or its call."""
        if row in self._in_flight:
            torch.cuda.current_stream().wait_stream(self.side)
            self._in_flight.discard(row)

    def before_call(self, row: int, topk_ids: torch.Tensor) -> None:
        """Layer `row` is about to compute the routing `topk_ids` [T, k]. Branches depend on rows and
        shapes only: graph safe."""
        self.join(row)
        usage = expert_usage(topk_ids, self.caches[row].num_experts)
        previous = self._previous
        if previous is not None and previous[0] == row - 1 and previous[1].shape[0] == usage.shape[0]:
            self.predictors[row - 1].record(previous[1], usage)  # the same tokens, one layer apart
        self._previous = (row, usage)
        if row + 1 >= len(self.caches):
            return
        following = self.caches[row + 1]
        count = min(following.num_slots, topk_ids.numel())
        if self.side is None:
            following.prefetch(self.predictors[row].likely(usage, count), self.implementation)
            return
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            following.prefetch(self.predictors[row].likely(usage, count), self.implementation)
        self._in_flight.add(row + 1)
