"""The benchmarks of `lynx-sglang bench`: policies (a layer call's decision), kernels (the active-expert
MoE; sglang_moe adds SGLang's own), bookkeeping (the runtime's work after a decision) and serve (end to
end: models, report), with their shared timers and routing batches."""
