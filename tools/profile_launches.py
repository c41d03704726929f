"""lynx's two routing launches at E 128, eager, for a profiler to watch (scripts/gpu-checks.sh, stage
`profile`: `ncu ... python -m lynx_sglang.tools.profile_launches`). Per case, three (rows, decide)
pairs, the first of which compiles. Cases in order: T 1, T 256, and T 256 with the earlier way of
picking (LaunchConfig.picks = 0: gathered bins and a prefix count, the batch's order ranked by O(E^2)
counting rather than sorted). Needs a CUDA device."""

from __future__ import annotations

import sys

import torch

from lynx_sglang.kernels.configs import device_name
from lynx_sglang.kernels.routing.launch_config import launch_config
from lynx_sglang.kernels.routing.triton_plan import plan_triton
from lynx_sglang.policies import get_policy

from .bench.batches import make_batch


def main() -> int:
    if not torch.cuda.is_available():
        print("profile_launches: the launches run on a GPU; no CUDA device here", file=sys.stderr)
        return 2
    policy = get_policy("lynx", num_experts=128, top_k=8)
    default = launch_config(256, 128, 8, device_name()).picks
    for tokens, picks in ((1, default), (256, default), (256, 0)):
        logits, ids, weights = make_batch(tokens, 128, 8, "cuda", torch.bfloat16)
        config = launch_config(tokens, 128, 8, device_name())._replace(picks=picks)
        plan = plan_triton(policy.fused_call(logits, ids, weights, torch.tensor(tokens, device="cuda")), config)
        for _ in range(3):
            plan.rows()
            plan.decide()
        torch.cuda.synchronize()
        print(f"profiled: lynx E 128 T {tokens}, {config}: three (rows, decide) pairs", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
