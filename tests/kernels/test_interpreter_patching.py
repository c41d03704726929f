"""Triton's interpreter swaps `triton.language` once per launch (kernels/interpret.py), not once per
helper call: the kernels compute the same, the language is itself again after every launch, a failing
launch included, and a helper call costs no swap of its own."""

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter

from lynx_sglang.kernels.interpret import interpreter_on, patch_language_once_per_launch

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
