"""The expert cache's bookkeeping on CPU tensors (host store and "device" both in CPU memory): the
copy plan, the two maps, the replacement policies and the copies (kernels/cache/)."""

import pytest
import torch

from lynx_sglang.kernels.cache import (
    ExpertCache,
    apply_plan_to_maps,
    copy_experts,
    plan_copies,
    replacement_policy,
)

E, H, I = 8, 16, 24


def weights(num_experts=E, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Expert e's weights are all e + something: a slot's content names its expert.
    w13 = torch.randn(num_experts, 2 * I, H, generator=gen) * 0.01 + torch.arange(num_experts).view(-1, 1, 1)
    w2 = torch.randn(num_experts, H, I, generator=gen) * 0.01 + torch.arange(num_experts).view(-1, 1, 1)
    return w13, w2


def mask(*experts, num_experts=E):
    wanted = torch.zeros(num_experts, dtype=torch.bool)
    wanted[list(experts)] = True
    return wanted


def check_consistent(cache: ExpertCache) -> None:
    """The maps are each other's inverse and every slot holds its expert's weights."""
    for slot, expert in enumerate(cache.slot_to_expert.tolist()):
        if expert >= 0:
            assert cache.expert_to_slot[expert] == slot
            assert torch.equal(cache.slot_w13[slot], cache.host_w13[expert])
            assert torch.equal(cache.slot_w2[slot], cache.host_w2[expert])
    resident = [e for e in range(cache.num_experts) if cache.expert_to_slot[e] >= 0]
    assert sorted(resident) == sorted(e for e in cache.slot_to_expert.tolist() if e >= 0)
    assert cache._expert_to_slot[-1] == -1  # the trash entry is never an expert's slot


def test_a_new_cache_holds_the_first_experts_and_the_rest_on_the_host():
    w13, w2 = weights()
    cache = ExpertCache(w13, w2, 3)
    assert cache.expert_to_slot.tolist() == [0, 1, 2, -1, -1, -1, -1, -1]
    assert cache.slot_w13.shape == (3, 2 * I, H) and cache.host_w13.shape == (E, 2 * I, H)
    # weights already in (CPU) host memory are the host store, not copied; the slots are copies
    assert cache.host_w13.data_ptr() == w13.data_ptr() and cache.slot_w13.data_ptr() != w13.data_ptr()
    assert torch.equal(cache.slot_w13, w13[:3])
    strided = ExpertCache(w13.transpose(1, 2).contiguous().transpose(1, 2), w2, 3)  # not contiguous: copied
    assert strided.host_w13.is_contiguous() and torch.equal(strided.host_w13, w13)
    assert cache.expert_bytes == (2 * I * H + H * I) * 4
    assert cache.resident.tolist() == [True] * 3 + [False] * 5
    check_consistent(cache)


def test_the_plan_has_static_length_and_copies_only_what_is_missing():
    slot_to_expert = torch.tensor([0, 1, 2], dtype=torch.int32)
    expert_to_slot = torch.tensor([0, 1, 2, -1, -1, -1, -1, -1], dtype=torch.int32)
    keep = torch.tensor([5.0, 1.0, 3.0], dtype=torch.float64)
    plan = plan_copies(mask(0, 4), expert_to_slot, slot_to_expert, keep)
    assert plan.source_expert.shape == (3,) and int(plan.num_copies) == 1
    # expert 4 replaces the lowest keep score among the slots not holding a wanted expert: slot 1
    assert plan.source_expert.tolist() == [4, -1, -1] and int(plan.target_slot[0]) == 1
    assert plan.evicted_expert.tolist() == [1, -1, -1]
    assert sorted(plan.target_slot.tolist()) == [0, 1, 2]  # a permutation: writes never collide
    plan = plan_copies(mask(0, 1), expert_to_slot, slot_to_expert, keep)
    assert int(plan.num_copies) == 0 and plan.source_expert.tolist() == [-1, -1, -1]


def test_empty_slots_go_before_any_resident_expert():
    slot_to_expert = torch.tensor([3, -1, 5, -1], dtype=torch.int32)
    expert_to_slot = torch.full((E,), -1, dtype=torch.int32)
    expert_to_slot[3], expert_to_slot[5] = 0, 2
    plan = plan_copies(mask(0, 1, 2), expert_to_slot, slot_to_expert, torch.zeros(4, dtype=torch.float64))
    assert plan.source_expert.tolist()[:3] == [0, 1, 2]
    assert plan.target_slot.tolist()[:2] == [1, 3] and plan.evicted_expert.tolist()[:3] == [-1, -1, 3]


def test_more_wanted_than_slots_places_as_many_as_fit_and_keeps_the_wanted_residents():
    w13, w2 = weights()
    cache = ExpertCache(w13, w2, 3)
    plan = cache.fetch(mask(1, 4, 5, 6, 7))  # 1 is resident: 2 slots left for 4 missing experts
    assert int(plan.num_copies) == 2
    assert cache.resident.tolist() == [False, True, False, False, True, True, False, False]
    check_consistent(cache)


def test_apply_plan_keeps_the_maps_inverse_when_nothing_is_copied():
    w13, w2 = weights()
    cache = ExpertCache(w13, w2, 2)
    before = cache.expert_to_slot.clone(), cache.slot_to_expert.clone()
    plan = plan_copies(mask(0), cache.expert_to_slot, cache.slot_to_expert, torch.zeros(2, dtype=torch.float64))
    apply_plan_to_maps(plan, cache._expert_to_slot, cache.slot_to_expert)
    assert torch.equal(cache.expert_to_slot, before[0]) and torch.equal(cache.slot_to_expert, before[1])


def test_lru_evicts_the_expert_used_longest_ago():
    w13, w2 = weights()
    cache = ExpertCache(w13, w2, 3, policy="lru")
    for used in ((0,), (1,), (2,), (0,)):  # 1 is now the least recently used
        cache.policy.record(mask(*used), mask(*used).long())
    cache.fetch(mask(6))
    assert cache.expert_to_slot[1] == -1 and cache.expert_to_slot[6] == 1
    check_consistent(cache)


def test_activation_aware_evicts_the_least_routed_expert_even_if_used_last():
    w13, w2 = weights()
    cache = ExpertCache(w13, w2, 3, policy="activation")
    pairs = torch.zeros(E, dtype=torch.long)
    for expert, count in ((0, 9), (1, 5), (2, 1)):  # 2 is used last, with the fewest pairs
        one = pairs.clone()
        one[expert] = count
        cache.policy.record(one > 0, one)
    cache.fetch(mask(6))
    assert cache.expert_to_slot[2] == -1 and cache.expert_to_slot[6] == 2
    lru = ExpertCache(w13, w2, 3, policy="lru")
    for expert in (0, 1, 2):
        lru.policy.record(mask(expert), mask(expert).long())
    lru.fetch(mask(6))
    assert lru.expert_to_slot[0] == -1  # where LRU would have dropped 0


def test_activation_counts_decay_so_old_favourites_leave():
    policy = replacement_policy("activation", E, "cpu")
    policy.record(mask(0), mask(0).long() * 100)
    for _ in range(64 * 8):  # eight half-lives without expert 0: 100 / 256 < 1
        policy.record(mask(1), mask(1).long())
    scores = policy.keep_scores(torch.tensor([0, 1], dtype=torch.int32))
    assert scores[0] < scores[1]


@pytest.mark.parametrize("implementation", ["reference", "cpu", "triton"])
def test_each_copy_implementation_writes_exactly_the_planned_slots(implementation):
    w13, w2 = weights()
    slots = torch.full((3, 2 * I, H), float("nan"))
    plan = plan_copies(mask(5, 7), torch.tensor([-1] * E, dtype=torch.int32), torch.tensor([-1, -1, -1], dtype=torch.int32),
                       torch.zeros(3, dtype=torch.float64))  # fmt: skip
    copy_experts(plan, w13, slots, implementation)
    targets = plan.target_slot.tolist()
    assert torch.equal(slots[targets[0]], w13[5]) and torch.equal(slots[targets[1]], w13[7])
    assert torch.isnan(slots[targets[2]]).all()  # an entry without a copy leaves its slot alone


def test_random_steps_keep_the_maps_and_the_slots_consistent():
    w13, w2 = weights(num_experts=16)
    gen = torch.Generator().manual_seed(3)
    for policy in ("lru", "activation"):
        cache = ExpertCache(w13, w2, 5, policy=policy)
        for _ in range(60):
            wanted = torch.rand(16, generator=gen) < 0.25
            resident_before = cache.resident.clone()
            plan = cache.fetch(wanted)
            placed = wanted & cache.resident
            assert int(placed.sum()) == min(int(wanted.sum()), 5)
            assert (resident_before & wanted <= cache.resident).all()  # a wanted resident never leaves
            assert int(plan.num_copies) == int((placed & ~resident_before).sum())
            cache.policy.record(placed, placed.long())
            check_consistent(cache)


def test_plan_and_map_update_compile_without_graph_breaks():
    """No .item(), host sync or data-dependent shape: what a CUDA graph needs (checked on the CPU)."""
    w13, w2 = weights()
    cache = ExpertCache(w13, w2, 3)

    def plan_and_apply(wanted, expert_to_slot_buffer, slot_to_expert, keep):
        plan = plan_copies(wanted, expert_to_slot_buffer[:-1], slot_to_expert, keep)
        apply_plan_to_maps(plan, expert_to_slot_buffer, slot_to_expert)
        return plan.source_expert, plan.target_slot

    compiled = torch.compile(plan_and_apply, fullgraph=True, backend="eager")
    keep = cache.policy.keep_scores(cache.slot_to_expert)
    source, target = compiled(mask(4, 0), cache._expert_to_slot, cache.slot_to_expert, keep)
    copy_experts_plan = [(s, t) for s, t in zip(source.tolist(), target.tolist()) if s >= 0]
    assert copy_experts_plan and cache.expert_to_slot[4] >= 0 and cache.expert_to_slot[0] == 0


def test_bad_arguments_are_named():
    w13, w2 = weights()
    with pytest.raises(ValueError, match="num_slots must be an integer in 1..8"):
        ExpertCache(w13, w2, 9)
    with pytest.raises(ValueError, match="num_slots must be an integer in 1..8"):
        ExpertCache(w13, w2, 0)
    with pytest.raises(ValueError, match="cache policy must be one of lru, activation"):
        ExpertCache(w13, w2, 2, policy="fifo")
    with pytest.raises(ValueError, match="disagree"):
        ExpertCache(w13, w2[:4], 2)
    cache = ExpertCache(w13, w2, 2)
    with pytest.raises(ValueError, match="implementation must be one of"):
        cache.fetch(mask(5), implementation="cuda")
    with pytest.raises(ValueError, match="must share the dtype and the shape"):
        copy_experts(plan_copies(mask(5), cache.expert_to_slot, cache.slot_to_expert,
                                 torch.zeros(2, dtype=torch.float64)), w13, cache.slot_w2)  # fmt: skip
