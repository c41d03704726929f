"""The benchmarks of `lynx-sglang bench`: policies (a layer call's decision), kernels (the active-expert
MoE; sglang_moe adds SGLang's own), bookkeeping (the runtime's work after a decision) and serve (end to
end: models, report), with their shared timers and routing batches."""

# One line per subcommand for `lynx-sglang bench --help`; lynx_sglang/cli.py dispatches them.
SUBCOMMANDS = {
    "policies": "time per layer call of each policy's select: torch reference and fused path, launches per call",
    "kernels": "the active-expert MoE kernel against SGLang's own: time, GB/s and share of copy bandwidth",
    "serve": "end to end: a real server per arm and expert kernel, decode tokens/s and TPOT per concurrency",
    "bookkeeping": "on a CPU, the runtime's checks, mask and statistics per layer call after a decision",
}
