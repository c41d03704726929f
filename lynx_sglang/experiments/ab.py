"""`lynx-sglang ab`: two policies on the same requests and the same server, side by side.

    lynx-sglang ab                                     # baseline against the best setting found
    lynx-sglang ab --a baseline --b lynx --b-param alpha=1 --concurrency 8,32 --out ab-lynx
    lynx-sglang ab --url http://127.0.0.1:30000 --admin-token T --task gsm8k.jsonl --score number
    lynx-sglang ab --b-config calibration/lynx-config.yaml --seed 1    # a calibrated config against baseline

Writes report.md, results.json, measurements.jsonl and PNG plots under --out; see docs/ab-experiments.md.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from functools import partial

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lynx_sglang.embedded import EMBEDDED_MODEL_DIR

from . import fmt, plots, report
from .analysis import LossBound, compare_arms, group_blocks, summarise_arm
from .arms import Arm, ArmSpecError, arm_from_config_file, arm_from_flags, check_policy_names
from .cli_args import add_common_arguments, command_parser, parse_command, parse_levels, prepare_items
from .experiment import Experiment, run, say
from .model_arms import refusals_before_start

# The embedded model's calibrated setting (`lynx-sglang calibrate`, confirmed on 2,000 held-out items at
# concurrency 8 and 32: docs/results/calibrate-shipped), shipped beside its checkpoint.
DEFAULT_B_CONFIG = EMBEDDED_MODEL_DIR / "lynx-config.yaml"


def parse_args(argv):
    parser = command_parser("ab", __doc__)
    arms = parser.add_argument_group("arms")
    arms.add_argument("--a", default="baseline", help="policy of arm A (default baseline)")
    arms.add_argument("--b", default=None, help="policy of arm B (default: the embedded model's calibrated config, "
                                                "lynx_sglang/embedded/checkpoint/lynx-config.yaml)")
    for side in ("a", "b"):
        arms.add_argument(f"--{side}-param", action="append", default=[], metavar="K=V",
                          help=f"a parameter of arm {side.upper()}'s policy, repeatable")
        arms.add_argument(f"--{side}-budget", metavar="SPEC", help=f"expert budget of arm {side.upper()}: experts=N, fraction=F, mass=P or tpot_ms=T")
        arms.add_argument(f"--{side}-config", metavar="FILE",
                          help=f"arm {side.upper()} is this config file (YAML/JSON, as serve --lynx-config loads it, "
                               "e.g. a calibrated lynx-config.yaml), instead of the policy flags")
    add_common_arguments(parser, default_n=2000, default_levels="1,8,32", default_out="ab-results")
    args = parse_command(parser, argv)
    return args


def build_arms(args) -> list[Arm]:
    for side in ("a", "b"):
        flags = [getattr(args, f"{side}_param"), getattr(args, f"{side}_budget"),
                 getattr(args, side) if side == "b" else args.a != "baseline"]
        if getattr(args, f"{side}_config") and any(flags):
            raise ArmSpecError(f"--{side}-config is the whole arm: give it without --{side}, --{side}-param or --{side}-budget")
    if args.a_config:
        a = arm_from_config_file(args.a_config)
    else:
        a = arm_from_flags(args.a, args.a_param, args.a_budget)
    if args.b_config:
        b = arm_from_config_file(args.b_config)
    elif args.b is None and not args.b_param and not args.b_budget:
        b = replace(arm_from_config_file(str(DEFAULT_B_CONFIG)), config_name="calibrated")
    else:  # --b-param or --b-budget alone apply to the calibrated setting: its policy and parameters stay
        calibrated = arm_from_config_file(str(DEFAULT_B_CONFIG))
        b = arm_from_flags(args.b or calibrated.policy, args.b_param, args.b_budget,
                           base_params={} if args.b else calibrated.params)  # fmt: skip
    if a == b:  # an A/A run: the same setting twice, measured and reported as two arms
        a, b = replace(a, tag="A"), replace(b, tag="B")
    return [a, b]


def main(argv=None, bound: LossBound | None = None, restore: bool = True) -> int:
    """`bound`: the one the verdicts apply (default 1 point); calibrate passes its max loss. `restore`:
    put a --url server back in its setting at the end (calibrate restores it once, after its runs)."""
    args = parse_args(argv)
    try:
        arms = build_arms(args)
        check_policy_names(arms, running_server=bool(args.url))
        levels = parse_levels(args.concurrency)
        items = prepare_items(args)
        refused = refusals_before_start(arms, args, EMBEDDED_MODEL_DIR)
        if refused:
            arm, why = refused[0]
            raise ArmSpecError(f"arm {arm.label}: {why}")
    except ValueError as error:  # a bad arm, task file or --concurrency
        print(f"lynx-sglang ab: error: {error}", file=sys.stderr)
        return 2
    return run(Experiment("ab", args, arms, levels, items, restore=restore), analyse,
               partial(publish, bound=bound or LossBound()))


# ---- figures ---------------------------------------------------------------------------------------

def analyse(experiment: Experiment, blocks, run_info: dict) -> dict:
    args = experiment.args
    data = group_blocks(blocks)
    a, b = (arm.label for arm in experiment.arms)
    summaries, comparisons = [], []
    for level in experiment.levels:
        found = {arm: data.get((level, arm)) for arm in (a, b)}
        level_summaries = {arm: summarise_arm(d, experiment.items, resamples=args.bootstrap, seed=args.seed)
                           for arm, d in found.items() if d is not None}
        summaries += level_summaries.values()
        if len(level_summaries) == 2:
            comparisons.append(compare_arms(found[a], found[b], experiment.items, level_summaries[a], level_summaries[b],
                                            resamples=args.bootstrap, seed=args.seed))
    experiment.raw = data
    return experiment.results(run_info, a=a, b=b, summaries=summaries, comparisons=comparisons)


# ---- what the figures say ---------------------------------------------------------------------------

def verdicts(comparison: dict, bound: LossBound = LossBound()) -> list[str]:
    lines = [accuracy_verdict(comparison, bound), bytes_verdict(comparison), speed_verdict(comparison)]
    return lines + ([cache_verdict(comparison)] if comparison.get("cache_misses_per_decode_token_a") is not None else [])


def cache_verdict(c: dict) -> str:
    a, b = c["cache_misses_per_decode_token_a"], c["cache_misses_per_decode_token_b"]
    change = f" ({fmt.percent_change(b / a)})" if a else ""
    return f"expert-cache misses per decode token (all cached layers): {a:.3f} (A) vs {b:.3f} (B){change}"


def accuracy_verdict(c: dict, bound: LossBound = LossBound()) -> str:
    text = (f"accuracy {fmt.pct(c['accuracy_a'])} (A) vs {fmt.pct(c['accuracy_b'])} (B), difference "
            f"{fmt.points(c['accuracy_diff'])} points {fmt.interval_points(c['accuracy_diff_ci'])}, "
            f"McNemar p = {fmt.p_value(c['mcnemar_p'])}")
    if c["mcnemar_p"] < 0.05:
        text += ": B is significantly " + ("less" if c["accuracy_diff"] < 0 else "more") + " accurate"
    else:
        text += ": no significant difference"
    why = f" ({bound.why})" if bound.why else ""
    return text + (f"; {bound.within()}{why}: {'yes' if bound.admits(c) else 'no'}"
                   f" (lower end {fmt.points_against(c['accuracy_diff_ci'][0], bound.points)})")


def bytes_verdict(c: dict) -> str:
    return (f"expert bytes per decode token: B reads {fmt.fewer(c['expert_bytes_fraction_b'])} than the model's "
            f"routing on the same decode steps; {fmt.megabytes(c['expert_bytes_per_decode_token_b'])} (B) vs "
            f"{fmt.megabytes(c['expert_bytes_per_decode_token_a'])} (A), {fmt.fewer(c['expert_bytes_ratio'])}")


def speed_verdict(c: dict) -> str:
    low, high = c["tpot_median_ratio_ci"]
    speed = "faster" if high < 1 else "slower" if low > 1 else "no clear difference"
    return (f"median TPOT {fmt.ms(c['tpot_median_ms_b'])} ms (B) vs {fmt.ms(c['tpot_median_ms_a'])} ms (A), ratio "
            f"{fmt.ratio(c['tpot_median_ratio'])} {fmt.interval(c['tpot_median_ratio_ci'])}: {speed}; "
            f"throughput ratio {fmt.ratio(c['throughput_ratio'])} {fmt.interval(c['throughput_ratio_ci'])}")


# ---- tables -----------------------------------------------------------------------------------------

SUMMARY_HEADER = ["c", "acc A", "acc B", "B-A (pts)", "95 % CI", "McNemar p", "bytes/tok A", "bytes/tok B", "B vs A bytes",
                  "TPOT A ms", "TPOT B ms", "throughput B/A"]


def summary_rows(results: dict) -> list[list[str]]:
    rows = []
    for c in results["comparisons"]:
        rows.append([str(c["concurrency"]), fmt.pct(c["accuracy_a"]), fmt.pct(c["accuracy_b"]),
                     fmt.points(c["accuracy_diff"]), fmt.interval_points(c["accuracy_diff_ci"]), fmt.p_value(c["mcnemar_p"]),
                     fmt.megabytes(c["expert_bytes_per_decode_token_a"]), fmt.megabytes(c["expert_bytes_per_decode_token_b"]),
                     fmt.fewer(c["expert_bytes_ratio"]), fmt.ms(c["tpot_median_ms_a"]), fmt.ms(c["tpot_median_ms_b"]),
                     fmt.ratio(c["throughput_ratio"])])
    return rows


TERMINAL_HEADER = ["c", "acc A %", "acc B %", "B-A pts [95 % CI]", "McNemar p", "expert MB/token A->B", "TPOT ms A->B",
                   "tok/s B/A"]


def terminal_rows(results: dict) -> list[list[str]]:
    rows = []
    for c in results["comparisons"]:
        bytes_a, bytes_b = c["expert_bytes_per_decode_token_a"], c["expert_bytes_per_decode_token_b"]
        change = "" if fmt.missing(c["expert_bytes_ratio"]) else f" ({fmt.percent_change(c['expert_bytes_ratio'])})"
        rows.append([str(c["concurrency"]), f"{100 * c['accuracy_a']:.1f}", f"{100 * c['accuracy_b']:.1f}",
                     f"{fmt.points(c['accuracy_diff'])} {fmt.interval_points(c['accuracy_diff_ci'])}",
                     fmt.p_value(c["mcnemar_p"]),
                     "-" if fmt.missing(bytes_a) or fmt.missing(bytes_b) else f"{bytes_a / 1e6:.2f}->{bytes_b / 1e6:.2f}{change}",
                     f"{fmt.ms(c['tpot_median_ms_a'])}->{fmt.ms(c['tpot_median_ms_b'])}", fmt.ratio(c["throughput_ratio"])])
    return rows


def print_summary(results: dict, console: Console, bound: LossBound = LossBound()) -> None:
    table = Table(title=f"A = {results['a']}   B = {results['b']}", title_justify="left")
    for name in TERMINAL_HEADER:
        table.add_column(name, justify="right")
    for row in terminal_rows(results):
        table.add_row(*row)
    out = Console(width=max(Console().width, 120))
    out.print(table)
    for c in results["comparisons"]:
        for line in verdicts(c, bound):
            out.print(escape(f"c={c['concurrency']}: {line}"), soft_wrap=True)


def publish(experiment: Experiment, results: dict, console: Console, bound: LossBound = LossBound()) -> None:
    out = experiment.out
    figures = [plots.accuracy_vs_bytes(results["summaries"], out / "accuracy_vs_expert_bytes.png"),
               plots.experts_per_layer(results["summaries"], out / "experts_per_layer.png"),
               plots.latency_distributions(experiment.raw, out / "latency.png")]
    (out / "report.md").write_text(report_markdown(results, figures, bound))
    print_summary(results, console, bound)
    say(console, f"report: {out / 'report.md'}")


def report_markdown(results: dict, figures: list[str], bound: LossBound = LossBound()) -> str:
    config = results["config"]
    lines = report.header(f"A/B: A = {results['a']}, B = {results['b']}", results)
    lines += [
        f"{report.what_ran(results)}; {config['blocks']} interleaved blocks per level; {results['seconds']:.0f} s.", "",
        "## Summary", "", fmt.markdown_table(SUMMARY_HEADER, summary_rows(results)), "",
    ]
    lines += [f"- **c={c['concurrency']}**: " + "; ".join(verdicts(c, bound)) for c in results["comparisons"]]
    lines += ["", "## Per task", "", per_task_table(results), "", "## Latency", "", latency_table(results), "",
              "## Experts", "", experts_table(results), "", "## Plots", ""]
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines + [""] + report.versions_section(results["versions"]))


def per_task_table(results: dict) -> str:
    rows = []
    for c in results["comparisons"]:
        for task, t in c["by_task"].items():
            rows.append([str(c["concurrency"]), task, str(t["items"]), fmt.pct(t["accuracy_a"]), fmt.pct(t["accuracy_b"]),
                         fmt.points(t["accuracy_diff"]), fmt.interval_points(t["accuracy_diff_ci"]), fmt.p_value(t["mcnemar_p"])])
    return fmt.markdown_table(["c", "task", "items", "acc A", "acc B", "B-A (pts)", "95 % CI", "McNemar p"], rows)


def latency_table(results: dict) -> str:
    rows = []
    for s in results["summaries"]:
        for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
            m = s[metric]
            rows.append([str(s["concurrency"]), s["arm"], metric.removesuffix("_ms").upper(),
                         f"{fmt.ms(m['median'])} {fmt.interval(m['median_ci'], 1)}", f"{fmt.ms(m['p90'])} {fmt.interval(m['p90_ci'], 1)}",
                         f"{fmt.ms(m['p99'])} {fmt.interval(m['p99_ci'], 1)}"])
        rows.append([str(s["concurrency"]), s["arm"], "throughput", f"{s['output_tokens_per_s']:.1f} tok/s",
                     f"{s['requests_per_s']:.1f} req/s", ""])
    return fmt.markdown_table(["c", "arm", "metric", "median ms [95 % CI]", "p90 ms", "p99 ms"], rows)


def experts_table(results: dict) -> str:
    rows = []
    for s in results["summaries"]:
        server = s["server"]
        per_layer = " / ".join(f"{layer['distinct_experts_before']:.2f}->{layer['distinct_experts_after']:.2f}"
                               for layer in server["layers"] if layer["distinct_experts_before"] is not None)
        rows.append([str(s["concurrency"]), s["arm"], fmt.ms(server["decode_batch"], 1), per_layer or "-",
                     fmt.megabytes(server["expert_bytes_per_decode_token_before"]),
                     fmt.megabytes(server["expert_bytes_per_decode_token_after"]),
                     fmt.pct(server["tokens_rerouted_fraction"]), str(server["fallback_steps"])])
    return fmt.markdown_table(["c", "arm", "decode batch", "distinct experts per layer (model -> policy)", "bytes/token model",
                               "bytes/token policy", "tokens rerouted", "fallback steps"], rows)
