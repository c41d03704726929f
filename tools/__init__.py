"""Developer tools, outside the runtime packages: the benchmarks behind `lynx-sglang bench` (bench/),
the ahead-of-time Hopper compile check (hopper_compile, compile_only), the SASS counts of the routing
launches (sass_report), the GPU launch sweep (launch_sweep), launch counting (launch_count) and a
profiler's target (profile_launches). They import lynx_sglang, its policies and kernels; nothing there
imports them (the CLI's `bench` subcommand, lazily)."""
