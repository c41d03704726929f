"""`lynx-sglang bench serve`: end-to-end decode speed of a served MoE, per policy and expert kernel.

Serves a model once per (arm, kernel) with `lynx-sglang serve` and drives each server with streaming
requests at several concurrency levels (each level keeps that many requests in flight, every request
forced to the same output length). Reports decode tokens/s, median and p90 time per output token, the
distinct experts per layer and the expert bytes read per decode token (from /lynx/stats), with the
ratios of each arm to `baseline` at the same concurrency.

The model: a named shape of a public model served with random weights made on the device
(`--shape mixtral-8x7b[,KEY=VALUE...]`, SGLang's `--load-format dummy`: no checkpoint on disk), a
Mixtral-shaped bf16 checkpoint built once and cached (the default; `--shape KEY=VALUE...` resizes it),
or `--model-path DIR`.

    lynx-sglang bench serve --shape mixtral-8x7b --arms "baseline;budget:fraction=0.5;lynx" --record r.json
    lynx-sglang bench serve --concurrency 1,4 --requests 8 --output-tokens 32      # small, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lynx_sglang.config import CONFIG_FILE_ENV, ENV_VARIABLES, KERNELS, ConfigError, build_config
from lynx_sglang.cpu_runtime.model_support import cpu_unsupported_reason
from lynx_sglang.experiments.client import AdminClient, ServerError
from lynx_sglang.experiments.cli_args import parse_levels
from lynx_sglang.experiments.launch import ManagedServer, served_address, terminate_as_interrupt
from lynx_sglang.launch_checks import checkpoint_dtype_needed
from lynx_sglang.model_config import MoeShape, read_model_config
from lynx_sglang.policies import available_policies
from lynx_sglang.policy_setup import resolve_policy_or_error, validate_for_model
from lynx_sglang.tiny_checkpoints.shapes import NAMED_SHAPES

from .models import BenchError, BenchModel, describe_device, memory_flags, resolve_model
from .profile import PROFILE_STEPS, profile_level, shares_line
from .report import Record, Result, check_writable, compute_summary, print_table, record_rows, result_json, write_replacing
from .streams import greedy_stream_request

DEFAULT_ARMS = "baseline;budget:fraction=0.5"
DEFAULT_CONCURRENCY = "1,16,32,64"
WARMUP_TOKENS = 4
STARTUP_TIMEOUT_S = 1200  # a large model loads slowly on a CPU; on a GPU, Triton compiles and graph capture
REQUEST_TIMEOUT_S = 1800
# What an arm sets on its server (Arm.serve_flags, --kernels). Given to every server too, after `--` or
# in the environment the servers inherit, they would override the arm's own while the table and the
# record kept the arm's label.
ARM_SETTINGS = ("policy", "params", "budget", "kernel", "stats")
ARM_FLAGS = ("--lynx-policy", "--lynx-param", "--lynx-budget", "--lynx-kernel", "--lynx-stats", "--lynx-config")
ARM_VARIABLES = (*(var for var, name in ENV_VARIABLES.items() if name in ARM_SETTINGS), CONFIG_FILE_ENV)


class Arm:
    """`policy[:budget]` as written in --arms: `baseline`, `lynx`, `budget:fraction=0.5`, `lynx:experts=4`;
    a policy class by path too, `mypackage.rules:MyPolicy[:experts=4]`."""

    def __init__(self, spec: str):
        self.spec = spec.strip()
        policy, _, budget = self.spec.partition(":")
        if policy.strip() not in available_policies():  # a class path: its own colon comes first
            policy, colon, budget = self.spec.rpartition(":")
            if not colon or not ("=" in budget or budget.strip().lower() in ("", "none", "off")):
                policy, budget = self.spec, ""
        self.policy, self.budget = policy.strip(), budget.strip() or None
        try:
            resolve_policy_or_error(self.policy)
            self.config = build_config({"policy": self.policy, "budget": self.budget}, environ={},
                                       flag_names={"policy": "policy", "budget": "budget"})
        except ConfigError as exc:
            head, plus, budget = self.spec.partition("+")
            hint = (f" (bench serve writes an arm's budget after a colon, {head.strip()}:{budget.strip()}; "
                    "POLICY+BUDGET is sweep's form)") if plus and head.strip() in available_policies() else ""
            raise BenchError(f"--arms: arm {self.spec!r}: {exc}{hint}") from None
        if self.is_baseline and self.config.budget is not None:  # its server gets no --lynx-budget
            raise BenchError(f"--arms: arm {self.spec!r}: baseline takes no budget (it is the model's own routing)")

    @property
    def key(self) -> tuple[str, str | None]:
        """What the arm runs, however written: `lynx`, `lynx:` and `lynx:none` are one arm."""
        return self.config.policy, self.config.budget

    @property
    def is_baseline(self) -> bool:
        return self.policy == "baseline"

    def label(self, kernel: str) -> str:
        """As printed: `lynx [auto]`; baseline's compute is always SGLang's (server_runs)."""
        return self.spec + ("" if self.is_baseline else f" [{kernel}]")

    def serve_flags(self, kernel: str) -> list[str]:
        if self.is_baseline:
            # SGLang's own routing and fused MoE with no bookkeeping: what the pruned arms are compared to.
            return ["--lynx-policy", "baseline", "--lynx-stats", "off"]
        return ["--lynx-policy", self.policy, *(["--lynx-budget", self.budget] if self.budget else []),
                "--lynx-kernel", kernel]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line naming the problem, not argparse's usage dump
        raise BenchError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lynx-sglang bench serve", description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--arms", default=DEFAULT_ARMS, help=f"';'-separated policy[:budget] (default: {DEFAULT_ARMS})")
    parser.add_argument("--kernels", default="auto",
                        help=f"run every non-baseline arm once per --lynx-kernel value listed, from "
                             f"{', '.join(KERNELS)} (default: auto); baseline always runs SGLang's own fused MoE")
    parser.add_argument("--concurrency", default=DEFAULT_CONCURRENCY, help=f"levels (default: {DEFAULT_CONCURRENCY})")
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default: 4 x concurrency)")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="(default: 128)")
    parser.add_argument("--output-tokens", type=int, default=256, help="(default: 256)")
    parser.add_argument("--model-path", help="serve this checkpoint instead of a named or built one")
    parser.add_argument("--shape", default="",
                        help=f"NAME[,KEY=VALUE...] ({', '.join(NAMED_SHAPES)}; random weights made by SGLang) or "
                             "KEY=VALUE,... overrides of the default built checkpoint, e.g. hidden_size=1024")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=int, default=0, metavar="C",
                        help=f"after the level at concurrency C, record {PROFILE_STEPS} decode steps of each server with "
                             "SGLang's profiler and split their time by category: printed, and in full in --record's "
                             "`profiles` (the traces stay in the run's log folder; default 0: none)")
    parser.add_argument("--record", help="write the rows (fixed schema, see docs) to this file, after every level")
    parser.add_argument("--json", help="also write the figures, ratios and before-figures to this file")
    parser.add_argument("serve_args", nargs="*", help="extra flags for `lynx-sglang serve` (after --)")
    return parser


def parse_list(flag: str, text: str, allowed=None) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise BenchError(f"{flag}: {text!r} lists nothing")
    for item in items:
        if allowed is not None and item not in allowed:
            raise BenchError(f"{flag}: {item!r} is not one of {', '.join(allowed)}")
    if len(set(items)) != len(items):
        raise BenchError(f"{flag}: {text!r} lists a value twice")
    return items


def parse_arms(text: str) -> list[Arm]:
    arms = [Arm(spec) for spec in text.split(";") if spec.strip()]
    if not arms:
        raise BenchError(f"--arms: {text!r} lists no arm")
    for index, arm in enumerate(arms):
        if twin := next((other for other in arms[:index] if other.key == arm.key), None):
            raise BenchError(f"--arms: {text!r} lists an arm twice: {twin.spec!r} and {arm.spec!r} run the same")
    return arms


def check_arm_settings(serve_args: list[str], environ=os.environ) -> None:
    """Refuse the settings an arm sets when they would reach every server: after `--`, in SGLang's
    `--config FILE` there (`lynx-sglang serve` turns its lynx-* keys into flags), or in LYNX_* variables."""
    how = ("would override every arm's own policy, budget, kernel and statistics: give those with --arms "
           "(policy[:budget]) and --kernels")
    for arg in serve_args:
        if (flag := arg.partition("=")[0]) in ARM_FLAGS:
            raise BenchError(f"{flag} after -- {how}")
        if flag in ("--api-key", "--admin-api-key"):  # the requests would be refused, after a server start
            raise BenchError(f"{flag} after --: bench serve sends no key to the servers it starts for itself "
                             "(on 127.0.0.1); leave it out")
    for key in sglang_config_keys(serve_args):
        if (flag := "--" + key.replace("_", "-")) in ARM_FLAGS:
            raise BenchError(f"--config: key {key!r} ({flag}) {how}")
    if given := [var for var in ARM_VARIABLES if environ.get(var)]:
        raise BenchError(f"{', '.join(given)} set in the environment (unset {'them' if len(given) > 1 else 'it'}): "
                         f"every arm's server inherits the environment, and {'they' if len(given) > 1 else 'it'} {how}")


def sglang_config_keys(serve_args: list[str]) -> list[str]:
    """The keys of SGLang's `--config FILE` among the extra flags; none when it cannot be read (the
    server then says why)."""
    import yaml

    if "--config" not in serve_args or serve_args.index("--config") + 1 >= len(serve_args):
        return []
    try:
        loaded = yaml.safe_load(Path(serve_args[serve_args.index("--config") + 1]).expanduser().read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    return [str(key) for key in loaded] if isinstance(loaded, dict) else []


def check_counts(args, levels: list[int]) -> None:
    for flag, value, least in (("--requests", args.requests, 0), ("--prompt-tokens", args.prompt_tokens, 1),
                               ("--output-tokens", args.output_tokens, 2)):  # fmt: skip
        if value < least:
            why = " (TPOT needs two output tokens)" if flag == "--output-tokens" else ""
            raise BenchError(f"{flag}: {value} is below {least}{why}")
    if args.requests and args.requests < max(levels):  # the row would say a concurrency it never reached
        raise BenchError(f"--requests {args.requests} is below --concurrency {max(levels)}: a level keeps that "
                         f"many requests in flight, so it needs at least as many (default: 4 x concurrency)")


def check_arms_for_model(arms: list[Arm], model_dir: Path, on_cpu: bool = False) -> None:
    """The model, then each arm, against its config.json: resolve_model calls it before it builds a
    checkpoint. on_cpu: a model SGLang cannot run on a CPU is refused here, not by every arm's server."""
    try:
        config = read_model_config(model_dir)
    except ConfigError as exc:
        raise BenchError(f"--model-path: {exc}") from None
    shape, architectures = MoeShape.from_config(config, model_dir), config.get("architectures") or ()
    if on_cpu and (why := cpu_unsupported_reason(architectures)):
        raise BenchError(f"{', '.join(architectures)} cannot be served on a CPU: {why}; run it on a GPU")
    if shape is None or shape.moe_layers == ():
        where = "no routed experts" if shape is None else f"num_hidden_layers={shape.num_layers}, none with routed experts"
        raise BenchError(f"the model has nothing to prune ({where}): bench serve measures MoE decode")
    for arm in arms:
        try:
            validate_for_model(arm.config, shape)
        except ConfigError as exc:
            raise BenchError(f"--arms: arm {arm.spec!r}: {exc}") from None


def server_runs(arms: list[Arm], kernels: list[str]) -> list[tuple[Arm, str]]:
    """One server per (arm, kernel), in --arms order: baseline once (SGLang's own fused MoE), every
    other arm once per kernel."""
    return [(arm, kernel) for arm in arms for kernel in (["sglang"] if arm.is_baseline else kernels)]


def stream_one(url: str, prompt: list[int], output_tokens: int) -> tuple[float, int]:
    """One streaming request: (TPOT in ms as sglang.bench_serving computes it, (latency - TTFT) /
    (output tokens - 1), and the output tokens received)."""
    request = greedy_stream_request(url, prompt, output_tokens)
    started = time.perf_counter()
    first, tokens = None, 0
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            for line in response:
                if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                    continue
                first = first or time.perf_counter()
                tokens = len(json.loads(line[5:])["output_ids"]) if b"output_ids" in line else tokens + 1
    except urllib.error.HTTPError as exc:
        raise ServerError(f"/generate: HTTP {exc.code} {exc.read()[:300].decode(errors='replace')}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        raise ServerError(f"/generate: {getattr(exc, 'reason', exc)}") from None
    latency = time.perf_counter() - started
    if tokens != output_tokens:
        raise ServerError(f"a request got {tokens} output tokens, not the {output_tokens} asked for (ignore_eos)")
    return ((latency - (first - started)) * 1000 / (tokens - 1) if tokens > 1 else 0.0), tokens


def run_level(server: ManagedServer, admin: AdminClient | None, concurrency: int, prompts: list[list[int]],
              output_tokens: int) -> tuple[float, list[tuple[float, int]], dict | None]:
    """(seconds, per-request (TPOT ms, tokens), /lynx/stats or None): `concurrency` workers over the
    level's requests, so a new request starts when one ends. The first `concurrency` prompts warm up."""
    warmup, prompts = prompts[:concurrency], prompts[concurrency:]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        # The level's batch shapes, once, outside the timing (first-use compiles on a GPU), with
        # prompts of their own so the measured ones find nothing in the prefix cache.
        list(pool.map(lambda p: stream_one(server.url, p, WARMUP_TOKENS), warmup))
    if admin is not None:
        admin.reset_stats()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda p: stream_one(server.url, p, output_tokens), prompts))
    seconds = time.perf_counter() - started
    return seconds, results, admin.stats() if admin is not None else None


def kv_tokens_held(args, levels: list[int]) -> int:
    """The KV cache tokens the highest level holds at once (every request's prompt, output and warm-up)."""
    return max(levels) * (args.prompt_tokens + args.output_tokens + WARMUP_TOKENS)


def kv_token_flags(args, levels: list[int], on_gpu: bool) -> list[str]:
    """On a CPU `lynx-sglang serve` caps the KV cache at 4096 tokens; the highest level must fit in it,
    or requests would queue and the level would not run at its concurrency."""
    if on_gpu or any(a == "--max-total-tokens" or a.startswith("--max-total-tokens=") for a in args.serve_args):
        return []
    needed = kv_tokens_held(args, levels)
    return ["--max-total-tokens", str(needed)] if needed > 4096 else []


def serve_one(model: BenchModel, arm: Arm, kernel: str, args, levels, extra: list[str], log: Path,
              on_result, profile=None) -> None:
    label = arm.label(kernel)
    server = ManagedServer(log, policy=None, model_path=str(model.path),
                           serve_args=["--dtype", "bfloat16", *model.serve_flags, *arm.serve_flags(kernel), *extra,
                                       *args.serve_args])  # fmt: skip
    started = time.perf_counter()
    try:
        server.wait_healthy(timeout=STARTUP_TIMEOUT_S)
        print(f"server {label}: started in {time.perf_counter() - started:.1f} s", flush=True)
        warn_if_kv_cache_short(server.url, label, max(levels), max(levels) * (args.prompt_tokens + args.output_tokens))
        admin = None if arm.is_baseline else AdminClient(server.url, server.token)
        for concurrency in levels:
            rng = random.Random(args.seed + concurrency)  # the same prompts for every arm at a level
            count = args.requests or 4 * concurrency
            prompts = draw_prompts(rng, model, args.prompt_tokens, concurrency + count)
            seconds, per_request, stats = run_level(server, admin, concurrency, prompts, args.output_tokens)
            compute = None if admin is None else compute_summary(admin.policy().get("expert_compute", {}))
            result = Result(arm.spec, kernel, arm.is_baseline, concurrency, count, sum(t for _, t in per_request),
                            seconds, [tpot for tpot, _ in per_request], stats, compute)
            experts = "" if stats is None else f", experts/layer {stats['distinct_experts_after']:.2f}"
            print(f"  {label} c={concurrency}: {count} requests in {seconds:.1f} s, {result.tokens_per_s:.1f} tok/s, "
                  f"TPOT median {result.tpot_median:.1f} ms, p90 {result.tpot_p90:.1f} ms{experts}", flush=True)
            on_result(result)
            if profile is not None and concurrency == args.profile:  # fresh prompts: nothing in the prefix cache
                profile(server, arm, kernel, concurrency, draw_prompts(rng, model, args.prompt_tokens, concurrency),
                        result.tpot_median)  # fmt: skip
    except ServerError as exc:
        elapsed = time.perf_counter() - started
        raise ServerError(f"{label}: {exc} ({elapsed:.0f} s after the start; server log: {log})\n"
                          f"{server.log_tail()}") from None
    finally:
        server.stop()


def draw_prompts(rng: random.Random, model: BenchModel, tokens: int, count: int) -> list[list[int]]:
    return [[rng.randrange(*model.prompt_ids) for _ in range(tokens)] for _ in range(count)]


def warn_if_kv_cache_short(url: str, label: str, concurrency: int, needed: int) -> None:
    """A KV cache smaller than the highest level's requests makes them wait (or be retracted): that level
    would measure a smaller batch than its concurrency. Said once per server, from SGLang's own figure."""
    try:
        with urllib.request.urlopen(url + "/server_info", timeout=30) as response:
            tokens = json.loads(response.read()).get("max_total_num_tokens")
    except (OSError, ValueError):
        return
    if isinstance(tokens, int) and tokens < needed:
        print(f"server {label}: warning: its KV cache holds {tokens} tokens but concurrency {concurrency} needs "
              f"{needed}; requests will wait and that level measures a smaller batch (fewer layers in --shape, "
              f"a higher --mem-fraction-static after --, or lower --concurrency)", flush=True)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with terminate_as_interrupt():  # SIGTERM too stops the server of the arm running
            return run(argv)
    except BenchError as exc:
        print(f"lynx-sglang bench serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lynx-sglang bench serve: interrupted; the record holds every level that finished", file=sys.stderr)
        return 130


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    arms = parse_arms(args.arms)
    try:
        levels = parse_levels(args.concurrency)
    except ValueError as error:
        raise BenchError(str(error)) from None
    kernels = parse_list("--kernels", args.kernels, KERNELS)
    check_counts(args, levels)
    if args.profile and args.profile not in levels:
        raise BenchError(f"--profile {args.profile}: not one of the --concurrency levels {levels}")
    if args.profile and args.output_tokens < PROFILE_STEPS + 8:
        raise BenchError(f"--profile needs --output-tokens {PROFILE_STEPS + 8} or more ({PROFILE_STEPS} decode steps are "
                         f"recorded once every request has started), not {args.output_tokens}")
    check_arm_settings(args.serve_args)
    try:  # a --port or --host after `--` is where every arm's server listens, one after the other
        served_address(args.serve_args)
    except ValueError as error:
        raise BenchError(str(error)) from None
    device = describe_device()
    for path, flag in ((args.record, "--record"), (args.json, "--json")):
        if path:
            check_writable(path, flag)  # an unwritable path fails now, not after the run
    logs = Path(tempfile.mkdtemp(prefix="lynx-bench-serve-"))
    try:
        model = resolve_model(args.model_path, args.shape, args.serve_args, device, logs,
                              check=lambda model_dir: check_arms_for_model(arms, model_dir, device.gpu_bytes is None),
                              kv_tokens=kv_tokens_held(args, levels))
    except BenchError:
        shutil.rmtree(logs, ignore_errors=True)  # nothing ran: no folder of empty logs left behind
        raise
    record = Record(args.record, device.name, "lynx-sglang bench serve " + shlex.join(argv)) if args.record else None
    if record is not None:
        record.write([])
    runs = server_runs(arms, kernels)
    print(f"model {model.describe()}; device {device.name}; {len(runs)} servers; concurrency {levels}; "
          f"{args.prompt_tokens} prompt + {args.output_tokens} output tokens per request; logs in {logs}", flush=True)
    results: list[Result] = []
    profiles: list[dict] = []

    def save() -> None:  # the record, rewritten whole after every level and profile
        if record is not None:
            record.write(record_rows(results, model), profiles if args.profile else None)

    def on_result(result: Result) -> None:
        results.append(result)
        save()

    def profile(server: ManagedServer, arm: Arm, kernel: str, concurrency: int, prompts, tpot_median_ms) -> None:
        label = f"  {arm.label(kernel)} profile c={concurrency}"
        entry = {"arm": arm.spec, "kernel": kernel, "concurrency": concurrency,
                 "num_layers": model.num_layers, "tpot_median_ms": round(tpot_median_ms, 3)}  # fmt: skip
        try:
            entry.update(profile_level(server.url, prompts, args.output_tokens, logs / "profiles",
                                       device.gpu_bytes is not None))  # fmt: skip
            print(f"{label}: {shares_line(entry['shares'])}; {entry['step_ms']:.2f} ms per step; {entry['trace']}",
                  flush=True)  # fmt: skip
            if entry["steps_recorded"] < PROFILE_STEPS or entry["batch_sizes"] != [concurrency]:
                entry["note"] = (f"{entry['steps_recorded']} decode steps at batch sizes {entry['batch_sizes']}, "
                                 f"not {PROFILE_STEPS} at {concurrency}")  # fmt: skip
                print(f"{label}: warning: {entry['note']}", flush=True)
        except Exception as exc:  # noqa: BLE001 - a profile that fails costs its entry, never the benchmark
            entry["error"] = f"{type(exc).__name__}: {exc}"
            print(f"{label}: failed ({entry['error']})", flush=True)
        profiles.append(entry)
        save()

    failed = 0
    extra = kv_token_flags(args, levels, device.gpu_bytes is not None) + memory_flags(model, device, args.serve_args)
    if (dtype := checkpoint_dtype_needed(read_model_config(model.path))) not in (None, "bfloat16"):
        print(f"model {model.name}: served in {dtype}, its checkpoint's: SGLang builds its attention in that dtype")
        extra += ["--dtype", dtype]  # after bench's bfloat16, before the user's flags
    for number, (arm, kernel) in enumerate(runs):
        try:
            serve_one(model, arm, kernel, args, levels, extra, logs / f"{number}-{arm.policy}-{kernel}.log", on_result,
                      profile if args.profile else None)
        except ServerError as exc:  # the other arms still run: a long GPU run keeps what it can measure
            failed += 1
            print(f"lynx-sglang bench serve: error: {exc}", file=sys.stderr, flush=True)
    print_table(results)
    if args.json:
        write_replacing(Path(args.json), json.dumps({"model": str(model.path), "shape": model.name,
                                                     "device": device.name, "results": result_json(results)}, indent=2), "--json")
    return 1 if failed else 0
