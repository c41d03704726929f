"""Policies that misbehave on purpose, loaded by the server under test as `fault_policies:<Class>`
to show that a broken policy costs its steps' pruning, never the server."""

from lynx_sglang.policies import Policy


class RaisingPolicy(Policy):
    name = "raising"

    def decide(self, ctx):
        raise RuntimeError("this policy always fails")


class WrongShapePolicy(Policy):
    """Returns one slot per token where the model has k."""

    name = "wrong-shape"

    def select(self, router_logits, topk_ids, topk_weights, num_real=None, layer_id=None, budget=None):
        decision = super().select(router_logits, topk_ids, topk_weights, num_real, layer_id, budget)
        return decision._replace(topk_ids=decision.topk_ids[:, :1], topk_weights=decision.topk_weights[:, :1])

    def decide(self, ctx):
        return ctx.voters.new_ones(ctx.num_experts)


class OutOfRangePolicy(Policy):
    """Returns expert ids that do not exist."""

    name = "out-of-range"

    def select(self, router_logits, topk_ids, topk_weights, num_real=None, layer_id=None, budget=None):
        decision = super().select(router_logits, topk_ids, topk_weights, num_real, layer_id, budget)
        return decision._replace(topk_ids=decision.topk_ids + self.num_experts)

    def decide(self, ctx):
        return ctx.voters.new_ones(ctx.num_experts)
