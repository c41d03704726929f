"""The decision digest of tensor-parallel ranks (scheduler/decisions.py): exact modular arithmetic, an
expert set's digest independent of padding rows and of which row chose which expert, recorded by the
runtime on every routed layer call only when there are several ranks, and exchanged between real
processes over a gloo group."""

import json
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lynx_sglang.config import LynxConfig
from lynx_sglang.policies import ids_to_mask
from lynx_sglang.kernels.routing.batch import real_rows
from lynx_sglang.scheduler.decisions import BASE, EXPERT_BASE, PRIME, DecisionDigest, decisions_by_rank
from lynx_sglang.scheduler.runtime import LynxRuntime
from lynx_sglang.scheduler.stats import MoeLayerInfo
from lynx_sglang.scheduler.step import Step

E, K = 8, 2


def layers(num_experts=E, count=2):
    return [MoeLayerInfo(layer_id, num_experts, K, expert_bytes=1000) for layer_id in range(count)]


def reference_digest(expert_sets):
    digest = 0
    for experts in expert_sets:
        value = sum(pow(EXPERT_BASE, e + 1, PRIME) for e in set(experts))
        digest = (digest * BASE + value) % PRIME
    return digest


def test_the_digest_is_exact_in_int64_over_many_steps_and_many_experts():
    rng = random.Random(3)
    digest = DecisionDigest(layers(num_experts=256, count=1), "cpu")
    sets = []
    for _ in range(500):
        ids = torch.tensor([[rng.randrange(256) for _ in range(K)] for _ in range(rng.randrange(1, 64))])
        digest.record(0, None, ids)
        sets.append(ids.flatten().tolist())
    assert digest.table[0].tolist() == [reference_digest(sets), 500]


def test_a_set_counts_not_who_chose_it_nor_the_padding_rows():
    ids = torch.tensor([[0, 3], [3, 5], [5, 0]])
    shuffled = torch.tensor([[5, 3], [0, 5], [3, 0], [3, 3]])
    padded = torch.cat([ids, torch.tensor([[7, 6], [-4, 99]])])  # padding rows may hold anything
    digests = []
    for batch, num_real in ((ids, None), (shuffled, 4), (padded, torch.tensor(3)), (padded, 3)):
        for active in (None, ids_to_mask(batch, real_rows(batch.shape[0], num_real, "cpu"), E)):
            digest = DecisionDigest(layers(), "cpu")
            digest.record(1, num_real, batch, active)
            digests.append(digest.read(0))
    assert all(d == digests[0] for d in digests), digests
    other = DecisionDigest(layers(), "cpu")
    other.record(1, None, torch.tensor([[0, 3], [3, 6]]))
    assert other.read(0)["digest"] != digests[0]["digest"]


def test_the_digest_follows_the_order_of_steps_and_resets():
    a, b = torch.tensor([[0, 1]]), torch.tensor([[2, 3]])
    first, second = DecisionDigest(layers(), "cpu"), DecisionDigest(layers(), "cpu")
    for digest, order in ((first, (a, b)), (second, (b, a))):
        for ids in order:
            digest.record(0, None, ids)
            digest.record(1, None, ids)
        digest.record(5, None, ids)  # not a tracked layer: ignored
    assert first.read(0)["digest"] != second.read(0)["digest"]
    assert first.read(2) == {**first.read(0), "rank": 2} and first.read(0)["steps"] == 2
    assert first.read(0)["layer_calls"] == 4
    first.reset()
    assert first.read(0) == {"rank": 0, "digest": "00000000", "steps": 0, "layer_calls": 0}


def make_runtime(tp_size, backend=None):
    topk = pytest.importorskip("sglang.srt.layers.moe.topk")
    runtime = LynxRuntime(LynxConfig(policy="budget", budget="experts=3"))
    runtime.bind_layers(layers(), "cpu", "tiny-mixtral", tp_size=tp_size, backend=backend)
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(16, E, generator=generator) * 2
    weights, ids = torch.softmax(logits, -1).topk(K, dim=-1)
    return runtime, logits, topk.StandardTopKOutput(weights, ids.to(torch.int32), logits), topk.TopKConfig(top_k=K)


def test_one_rank_keeps_no_digest():
    runtime, *_ = make_runtime(1)
    assert runtime.decisions is None


@pytest.mark.parametrize("backend", [None, "torch"])  # the mask from the C++ op where it builds / torch ops
def test_the_runtime_digests_every_routed_layer_call_with_several_ranks(backend):
    runtime, logits, output, config = make_runtime(2, backend)
    step = Step("decode", True, 16)
    runtime.begin_step(step)
    for layer_id in (0, 1):
        routed = runtime.route(output, logits, config, layer_id, torch.tensor(12), None, step)
    runtime.end_step(step, 16)
    final = routed.topk_ids[:12].flatten().tolist()
    assert len(set(final)) <= 3
    reference = (reference_digest([final]) * BASE + reference_digest([final])) % PRIME
    read = runtime.decisions.read(0)
    assert read["digest"] == f"{reference:08x}" and read["steps"] == 1 and read["layer_calls"] == 2
    runtime.handle({"op": "reset_stats"})
    assert runtime.decisions.read(0)["steps"] == 0
    assert decisions_by_rank(runtime.decisions, None)["ranks_agree"]


def _rank(rank, init_file, out_dir, diverge):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        digest = DecisionDigest(layers(), "cpu")
        for step in range(5):
            ids = torch.tensor([[step % E, (step + 1) % E]])
            if diverge and rank == 1 and step == 4:
                ids = torch.tensor([[0, 7]])
            digest.record(0, None, ids)
            digest.record(1, None, ids)
        result = decisions_by_rank(digest, dist.group.WORLD)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("diverge", [False, True])
def test_ranks_exchange_their_digests_over_a_gloo_group(tmp_path, diverge):
    mp.start_processes(_rank, args=(str(tmp_path / "init"), str(tmp_path), diverge), nprocs=2, join=True,
                       start_method="spawn")
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert results[0] == results[1]  # every rank sees every rank's
    by_rank = results[0]["decisions_by_rank"]
    assert [entry["rank"] for entry in by_rank] == [0, 1] and all(entry["steps"] == 5 for entry in by_rank)
    assert results[0]["ranks_agree"] is (not diverge)
    assert (by_rank[0]["digest"] == by_rank[1]["digest"]) is (not diverge)
