"""Stands in for `sgl_kernel` on CPU installs, where no CPU build of it exists.

SGLang imports many `<name>_cpu` functions at module import time when its CPU engine is on, but on
this path only two are ever called while serving: `assign_req_to_token_pool_cpu` (every prefill and
decode step) and `copy_all_layer_kv_cache_cpu` (KV moves). Those are implemented here in plain torch;
every other name resolves to a function that raises a clear error if it is ever called.
"""

from __future__ import annotations

import ctypes


def assign_req_to_token_pool_cpu(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len):
    """For each request i: req_to_token[req_i, start_i:end_i] = the next (end_i - start_i) cache slots."""
    del pool_len  # the row length is req_to_token's own
    lengths = (end_offset - start_offset).tolist()
    starts = start_offset.tolist()
    rows = req_pool_indices.tolist()
    offset = 0
    for row, start, length in zip(rows, starts, lengths):
        req_to_token[row, start : start + length] = out_cache_loc[offset : offset + length].to(req_to_token.dtype)
        offset += length


def copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt_loc, src_loc):
    """Copy KV slots src -> tgt in every layer buffer, given raw base addresses and row strides in bytes."""
    pairs = list(zip(src_loc.tolist(), tgt_loc.tolist()))
    for base, stride in zip(data_ptrs.tolist(), strides.tolist()):
        for src, tgt in pairs:
            ctypes.memmove(base + tgt * stride, base + src * stride, stride)


def _unavailable(name: str):
    def fail(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} has no CPU implementation in lynx-sglang's CPU runtime; "
            "this SGLang feature needs a GPU install (pip install 'lynx-sglang[gpu]')"
        )

    fail.__name__ = name
    return fail


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _unavailable(name)


__version__ = "0.0.0+lynx-cpu-standin"
