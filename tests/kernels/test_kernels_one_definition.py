"""The statistics table's columns (bookkeeping/layout.py) and the rule codes (routing/rules.py) are
defined once, in Python: the Triton kernels take them as constexprs and the C++ ops from a generated
header. So a change there reaches both. Shown in a fresh process that reverses the columns and every
code before any consumer is imported (a C++ built in a cache of its own, Triton's interpreter without
a GPU): the three bookkeeping implementations still write each figure to its named column, and the
fused routing of every rule still equals the torch reference."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler here")

CHANGED_DEFINITIONS = """
import torch

from lynx_sglang.kernels.bookkeeping import layout
from lynx_sglang.kernels.routing import rules

layout.FIELDS = tuple(reversed(layout.FIELDS))
rules.MODES.update({name: len(rules.MODES) - 1 - code for name, code in rules.MODES.items()})
rules.KEEP_MODES.update({name: len(rules.KEEP_MODES) - 1 - code for name, code in rules.KEEP_MODES.items()})
assert layout.column("steps") == 6 and rules.MODES["LYNX"] == 6 and rules.KEEP_MODES["GIVEN"] == 0

from lynx_sglang.kernels.bookkeeping.cpu import generated_header, record_cpu
from lynx_sglang.kernels.bookkeeping.reference import record_torch
from lynx_sglang.kernels.bookkeeping.triton_launch import record_triton
from lynx_sglang.kernels.routing import fused_route
from lynx_sglang.kernels.routing.cpu import generated_header as routing_header
from lynx_sglang.policies import get_policy

assert "#define LYNX_STAT_STEPS 6" in generated_header() and "#define LYNX_MODE_LYNX 6" in routing_header()
device = "cuda" if torch.cuda.is_available() else "cpu"
generator = torch.Generator().manual_seed(0)
logits = (torch.randn(12, 16, generator=generator) * 2).to(device)
ids = torch.softmax(logits, -1).topk(2, dim=-1).indices.to(torch.int32)
weights = torch.softmax(logits, -1).gather(1, ids.long())
moved = ids.flip(1).clone()
moved[:5, 1] = (moved[:5, 1] + 1) % 16  # five rows lose an expert
for record in (record_torch, record_triton) + ((record_cpu,) if device == "cpu" else ()):
    table = torch.zeros(len(layout.FIELDS), dtype=torch.float64, device=device)
    step = torch.zeros((), dtype=torch.float64, device=device)
    record(table, step, torch.tensor(10, device=device), logits, ids, moved)
    figures = dict(zip(layout.FIELDS, table.tolist()))
    assert figures["steps"] == 1 and figures["tokens"] == 10 and figures["rerouted"] == 5, (record, figures)
    assert figures["fallbacks"] == 0 and figures["mass_dropped"] > 0, (record, figures)

policies = ["lynx", "oea", "budget", "topn", "coverage", "static-topk", "anchor"]
policies = [get_policy(name, num_experts=16, top_k=2) for name in policies] + [
    get_policy("coverage", num_experts=16, top_k=2, max_dropped_mass=0.2)]
decisions = set()
for policy in policies:
    want = policy.select(logits, ids, weights, 10, implementation="torch")
    decisions.add(tuple(want.active_mask.tolist()))
    for implementation in ("triton", "cpu") if device == "cpu" else ("triton",):
        call = policy.fused_call(logits, ids, weights, 10, implementation=implementation)
        if implementation == "triton" and policy.fused_rule() is None:
            continue  # decided in torch on Triton: only the shared stages run fused
        got = fused_route(call, implementation)
        assert torch.equal(got.active_mask, want.active_mask), (policy, implementation)
        assert torch.equal(got.topk_ids, want.topk_ids), (policy, implementation)
assert len(decisions) >= 4  # the rules decide differently here: a rule run under another's code would show
print("one definition reached both")
"""


def test_a_change_of_the_python_definitions_reaches_the_triton_kernels_and_the_cpp_ops(tmp_path):
    env = {**os.environ, "LYNX_SGLANG_CACHE": str(tmp_path)}
    if "TRITON_INTERPRET" not in env and not _cuda():
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CHANGED_DEFINITIONS)], capture_output=True,
                          text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0 and "one definition reached both" in proc.stdout, proc.stdout + proc.stderr[-4000:]
    assert len(list(tmp_path.glob("*.so"))) == 2  # both C++ ops were built from the changed definitions


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
