"""Triton's interpreter swaps `triton.language` once per launch (kernels/interpret.py), not once per
helper call: the kernels compute the same, the language is itself again after every launch, a failing
launch included, and a helper call costs no swap of its own. Reductions whose combine function is
marked with a numpy ufunc (ours, and Triton's xor_sum that tl.sort uses) reduce in numpy, with the
results of Triton's element-by-element path."""

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter

from lynx_sglang.kernels.interpret import (interpreter_on, patch_language_once_per_launch,
                                          reduce_marked_combines_with_numpy, reduces_like)

pytestmark = pytest.mark.skipif(not interpreter_on(), reason="the interpreter runs only without CUDA")


@triton.jit
def scaled(x, factor):
    return x * factor


@triton.jit
def doubled_then_summed(x):
    return tl.sum(scaled(x, 2.0), axis=0)


@triton.jit
def row_sums_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    x = tl.load(x_ptr + row * BLOCK + tl.arange(0, BLOCK))
    tl.store(out_ptr + row, doubled_then_summed(x) + scaled(1.0, 0.5))


@triton.jit
def failing_kernel(x_ptr, BLOCK: tl.constexpr):
    x = tl.load(x_ptr + tl.arange(0, BLOCK))
    tl.store(x_ptr + tl.arange(0, BLOCK * 2), x)  # a block of the wrong shape: the launch raises


def row_sums(x: torch.Tensor) -> torch.Tensor:
    out = torch.empty(x.shape[0])
    row_sums_kernel[(x.shape[0],)](x, out, BLOCK=x.shape[1])
    return out


def test_the_interpreter_is_changed_once():
    assert patch_language_once_per_launch() and patch_language_once_per_launch()
    assert interpreter._patch_lang.once_per_launch


def test_kernels_with_helper_calls_compute_as_torch_does():
    patch_language_once_per_launch()
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(row_sums(x), 2 * x.sum(dim=1) + 0.5)


def test_helper_calls_do_not_swap_the_language_again(monkeypatch):
    """Triton's swap walks the language module by module (`_patch_builtin`): as many walks for one
    program as for eight, though each program makes three helper calls."""
    patch_language_once_per_launch()
    walks = []
    walk = interpreter._patch_builtin
    monkeypatch.setattr(interpreter, "_patch_builtin", lambda *args: (walks.append(args[0]), walk(*args))[1])
    counts = []
    for rows in (1, 8):
        walks.clear()
        row_sums(torch.ones(rows, 16))
        counts.append(len(walks))
    assert counts[0] > 0 and counts[0] == counts[1], counts


def test_the_language_is_itself_after_every_launch():
    patch_language_once_per_launch()
    originals = {name: getattr(tl, name) for name in ("sum", "load", "store", "arange", "where")}
    row_sums(torch.ones(2, 16))
    with pytest.raises(Exception):
        failing_kernel[(1,)](torch.ones(16), BLOCK=16)
    assert {name: getattr(tl, name) for name in originals} == originals
    torch.testing.assert_close(row_sums(torch.ones(2, 16)), torch.full((2,), 32.5))  # and launches still work


@reduces_like(np.bitwise_or)
@triton.jit
def bit_or(a, b):
    return a | b


@triton.jit
def bit_or_unmarked(a, b):
    return a | b


@triton.jit
def reductions_kernel(x_ptr, out_ptr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Column ORs (marked, then unmarked), the OR of all, the xor_sum of each row, each row sorted."""
    rows, cols = tl.arange(0, ROWS), tl.arange(0, COLS)
    x = tl.load(x_ptr + rows[:, None] * COLS + cols[None, :])
    tl.store(out_ptr + cols, tl.reduce(x, 0, bit_or))
    tl.store(out_ptr + COLS + cols, tl.reduce(x, 0, bit_or_unmarked))
    tl.store(out_ptr + 2 * COLS + tl.arange(0, 1), tl.reshape(tl.reduce(x, None, bit_or, keep_dims=True), [1]))
    tl.store(out_ptr + 2 * COLS + 1 + rows, tl.xor_sum(x, 1))
    tl.store(out_ptr + 2 * COLS + 1 + ROWS + rows[:, None] * COLS + cols[None, :], tl.sort(x, 1, descending=True))


def test_marked_reductions_and_tritons_sort_compute_as_numpy_does_without_the_slow_path(monkeypatch):
    assert reduce_marked_combines_with_numpy() and reduce_marked_combines_with_numpy()
    calls = []
    slow = interpreter.ReduceOps.generic_reduce
    monkeypatch.setattr(interpreter.ReduceOps, "generic_reduce", lambda self, inputs: (calls.append(1), slow(self, inputs))[1])
    x = torch.randint(0, 1 << 40, (4, 8), generator=torch.Generator().manual_seed(1), dtype=torch.int64)
    out = torch.zeros(2 * 8 + 1 + 4 + 4 * 8, dtype=torch.int64)
    reductions_kernel[(1,)](x, out, ROWS=4, COLS=8)
    values = x.numpy()
    column_or = np.bitwise_or.reduce(values, axis=0)
    assert out[:8].tolist() == column_or.tolist() and out[8:16].tolist() == column_or.tolist()
    assert out[16].item() == np.bitwise_or.reduce(values, axis=None)
    assert out[17:21].tolist() == np.bitwise_xor.reduce(values, axis=1).tolist()
    assert out[21:].view(4, 8).tolist() == torch.sort(x, dim=1, descending=True).values.tolist()
    assert len(calls) == 1  # only the unmarked combine took Triton's element-by-element path
