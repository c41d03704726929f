"""`lynx-sglang sweep`: many arms on one server, and the accuracy / expert-bytes frontier.

    lynx-sglang sweep --policies "lynx:alpha=0.5,1,2;oea:k0=1;topn:num_experts_kept=3..7;budget:fraction=0.5"
    lynx-sglang sweep --policies "lynx+experts=3..5:alpha=1" --concurrency 32 --out sweep-lynx
    lynx-sglang sweep --out sweep-lynx --resume        # continue an interrupted sweep (same flags)

Arms: POLICY[+BUDGET][:PARAM=VALUES]..., separated by ';' (VALUES: a value, a comma list or LO..HI).
Without --policies the arms are every shipped policy at settings derived from the served model's number
of experts and top-k. An arm the server refuses is reported and skipped; the others still run.
The reference arm (default baseline) is always measured; every other arm is compared with it.
"""

from __future__ import annotations

import sys
from functools import partial

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lynx_sglang.embedded import EMBEDDED_MODEL_DIR

from . import fmt, plots, report, stats
from .analysis import LossBound, compare_arms, group_blocks, same_step_fraction, summarise_arm, within_points
from .arms import ArmSpecError, arm_from_config_file, check_policy_names, parse_arms
from .client import ServerError
from .cli_args import add_common_arguments, command_parser, parse_command, parse_levels, prepare_items
from .experiment import Experiment, run, say
from .model_arms import check_not_all_refused, default_arms, refusals_before_start, served_shape

GOAL_BYTES_RATIO = 0.4  # "at least 60 % fewer expert bytes per decode token"
GOAL_POINTS = 0.01  # "... with accuracy within 1 point" (LossBound's default)


def parse_args(argv):
    parser = command_parser("sweep", __doc__)
    parser.add_argument("--policies", help="the arms (default: every shipped policy at settings derived from the "
                                           "model's experts and top-k)")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="a config file (YAML/JSON, as serve --lynx-config loads it) as one more arm, repeatable; "
                             "with --config and no --policies only these arms run beside the reference")
    parser.add_argument("--reference", default="baseline", help="the arm every other is compared with (default baseline)")
    parser.add_argument("--resume", action="store_true", help="continue from --out's measurements.jsonl (same flags)")
    add_common_arguments(parser, default_n=1000, default_levels="8,32", default_out="sweep-results")
    args = parse_command(parser, argv)
    return args


def main(argv=None, bound: LossBound | None = None, restore: bool = True) -> int:
    """`bound`: the one the goal lines apply (default: the 60 % goal's 1 point); calibrate passes its own.
    `restore`: put a --url server back in its setting at the end (calibrate restores it once, itself)."""
    args = parse_args(argv)
    try:
        reference = parse_arms(args.reference)
        if len(reference) != 1:
            raise ArmSpecError(f"--reference must be one arm, got {len(reference)}")
        levels = parse_levels(args.concurrency)
        items = prepare_items(args)
        configs = [arm_from_config_file(path) for path in args.config]
        if args.policies is not None:  # given empty, it lists no arm: an error
            candidates = parse_arms(args.policies) + configs
        else:
            candidates = configs or model_default_arms(args)
        arms = reference + [arm for arm in candidates if arm != reference[0]]
        if len(arms) == 1:
            raise ArmSpecError(f"nothing to compare with the reference {arms[0].label}: every candidate is it "
                               "(name others with --policies or --config)")
        check_policy_names(arms, running_server=bool(args.url))
        check_refusals(arms, args)
        labels = [arm.label for arm in arms]
        if len(set(labels)) != len(labels):
            raise ArmSpecError(f"two arms share a label ({', '.join(sorted({l for l in labels if labels.count(l) > 1}))}): "
                               "give each --config file its own name")
    except (ValueError, ServerError) as error:  # a bad arm, task file or --concurrency; an unreachable --url
        print(f"lynx-sglang sweep: error: {error}", file=sys.stderr)
        return 2
    return run(Experiment("sweep", args, arms, levels, items, restore=restore), analyse, partial(publish, bound=bound or LossBound()),
               resume=args.resume)


def check_refusals(arms: list, args) -> None:
    """A reference, or every other arm, that the model this sweep starts would refuse ends it before the
    server starts; an arm of several is left to the server, which skips it (the report says why)."""
    refused = dict(refusals_before_start(arms, args, EMBEDDED_MODEL_DIR))
    reference = arms[0]
    if reference in refused:
        raise ArmSpecError(f"the reference arm {reference.label}: {refused[reference]}")
    check_not_all_refused(refused, len(arms) - 1, f"every arm to compare with {reference.label}")


def model_default_arms(args) -> list:
    """The default arms for the model this sweep serves: read from the running server's /lynx/stats
    (--url) or from the checkpoint's config.json."""
    shape = served_shape(args.url, args.admin_token, args.model_path, EMBEDDED_MODEL_DIR, args.api_key)
    if shape is None:
        raise ArmSpecError("the model has no routed experts the policies could prune; nothing to sweep")
    arms, dropped = default_arms(shape)
    print(f"default arms for {shape.describe()}: {len(arms)}", file=sys.stderr)
    for arm, reason in dropped:
        print(f"  not proposed: {arm.label} ({reason})", file=sys.stderr)
    return arms


# ---- figures ---------------------------------------------------------------------------------------

def analyse(experiment: Experiment, blocks, run_info: dict) -> dict:
    args = experiment.args
    data = group_blocks(blocks)
    reference = experiment.arms[0].label
    summaries, comparisons, frontiers = [], [], []
    for level in experiment.levels:
        level_summaries = {arm.label: summarise_arm(data[(level, arm.label)], experiment.items, resamples=args.bootstrap,
                                                    seed=args.seed, latency_quantiles=(0.5, 0.9))
                           for arm in experiment.arms if (level, arm.label) in data}
        summaries += level_summaries.values()
        level_comparisons = {}
        if reference in level_summaries:
            for label, summary in level_summaries.items():
                if label != reference:
                    level_comparisons[label] = compare_arms(
                        data[(level, reference)], data[(level, label)], experiment.items, level_summaries[reference],
                        summary, resamples=args.bootstrap, seed=args.seed, ratios=("tpot_ms",))
        comparisons += level_comparisons.values()
        if level_summaries:
            frontiers.append(frontier_points(level, level_summaries, level_comparisons, reference))
    return experiment.results(run_info, reference=reference, summaries=summaries, comparisons=comparisons,
                              frontiers=frontiers)


def frontier_points(level: int, summaries: dict[str, dict], comparisons: dict[str, dict], reference: str) -> dict:
    points = []
    reference_bytes = summaries.get(reference, {}).get("server", {}).get("expert_bytes_per_decode_token_after")
    for label, summary in summaries.items():
        server = summary["server"]
        comparison = comparisons.get(label)
        bytes_after = server["expert_bytes_per_decode_token_after"]
        points.append({
            "arm": label, "accuracy": summary["accuracy"], "accuracy_ci": summary["accuracy_ci"],
            "expert_bytes_per_decode_token": bytes_after,
            "expert_mb_per_token": None if bytes_after is None else bytes_after / 1e6,
            "distinct_experts": server["distinct_experts_after"], "decode_batch": server.get("decode_batch"),
            "bytes_vs_reference": bytes_after / reference_bytes if reference_bytes and bytes_after is not None else None,
            "bytes_fraction": same_step_fraction(server),
            "tokens_rerouted_fraction": server["tokens_rerouted_fraction"],
            "tpot_median_ms": summary["tpot_ms"]["median"],
            "accuracy_diff": comparison["accuracy_diff"] if comparison else 0.0,
            "accuracy_diff_ci": comparison["accuracy_diff_ci"] if comparison else [0.0, 0.0],
            "mcnemar_p": comparison["mcnemar_p"] if comparison else 1.0,
            "meets_goal": bool(comparison and comparison["expert_bytes_fraction_b"] is not None
                               and comparison["expert_bytes_fraction_b"] <= GOAL_BYTES_RATIO
                               and within_points(comparison, GOAL_POINTS)),
        })
    measured = [p for p in points if p["bytes_fraction"] is not None]
    for point, on_front in zip(measured, stats.non_dominated([(p["bytes_fraction"], p["accuracy"]) for p in measured])):
        point["on_frontier"] = on_front
    for point in points:
        point.setdefault("on_frontier", False)
    points.sort(key=lambda p: (p["bytes_fraction"] is None, p["bytes_fraction"] or 0))
    return {"concurrency": level, "points": points}


HEADER = ["arm", "batch", "experts/layer", "MB/token", "bytes vs model", "bytes vs ref arm", "accuracy [95 % CI]", "diff pts [95 % CI]", "McNemar p",
          "rerouted", "TPOT ms", "frontier"]


def table_rows(frontier: dict, reference: str, *, terminal: bool = False) -> list[list[str]]:
    rows = []
    for p in frontier["points"]:
        is_reference = p["arm"] == reference
        accuracy = f"{fmt.pct(p['accuracy'])} {fmt.interval_pct(p['accuracy_ci'])}"
        if terminal:  # narrower cells
            accuracy = accuracy.replace(" %", "")
        rows.append([p["arm"], fmt.ms(p["decode_batch"], 1), fmt.ms(p["distinct_experts"], 2), fmt.ms(p["expert_mb_per_token"], 3),
                     fmt.fewer(p["bytes_fraction"]), "reference" if is_reference else fmt.fewer(p["bytes_vs_reference"]), accuracy,
                     "reference" if is_reference else f"{fmt.points(p['accuracy_diff'])} {fmt.interval_points(p['accuracy_diff_ci'])}",
                     "" if is_reference else fmt.p_value(p["mcnemar_p"]), fmt.pct(p["tokens_rerouted_fraction"]),
                     fmt.ms(p["tpot_median_ms"]), ("*" if p["on_frontier"] else "") + (" goal" if p["meets_goal"] else "")])
    return rows


def goal_line(results: dict, frontier: dict, bound: LossBound = LossBound()) -> str:
    """Which arm reads the fewest expert bytes within the bound of the reference, and whether that
    meets the 60 % goal (said only under the goal's own bound)."""
    reference = results["reference"]
    candidates = [p for p in frontier["points"] if p["arm"] != reference and p["bytes_fraction"] is not None
                  and bound.admits(p)]
    level = frontier["concurrency"]
    if not candidates:
        notes = "; ".join(filter(None, [bound.why, "lower end of the 95 % interval"]))
        return f"c={level}: no arm is {bound.within()} of {reference} ({notes})"
    why = f" ({bound.why})" if bound.why else ""
    best = min(candidates, key=lambda p: p["bytes_fraction"])
    line = (f"c={level}: fewest expert bytes {bound.within()} of {reference}{why}: {best['arm']}, "
            f"{fmt.fewer(best['bytes_fraction'])} bytes per decode token than the model's routing of the same steps "
            f"({fmt.fewer(best['bytes_vs_reference'])} than the {reference} arm), accuracy difference "
            f"{fmt.points(best['accuracy_diff'])} points {fmt.interval_points(best['accuracy_diff_ci'])}")
    if bound != LossBound():
        return line
    return line + f": {'meets' if best['bytes_fraction'] <= GOAL_BYTES_RATIO else 'misses'} the 60 % goal"


def publish(experiment: Experiment, results: dict, console: Console, bound: LossBound = LossBound()) -> None:
    out = experiment.out
    figures = [plots.frontier(f["points"], f["concurrency"], out / f"frontier_c{f['concurrency']}.png",
                              reference=results["reference"]) for f in results["frontiers"]]
    (out / "report.md").write_text(report_markdown(results, figures, bound))
    terminal = Console(width=max(Console().width, 200))
    for frontier in results["frontiers"]:
        table = Table(title=f"concurrency {frontier['concurrency']} (* = on the frontier)", title_justify="left")
        for name in HEADER:
            table.add_column(name, justify="left" if name == "arm" else "right", no_wrap=True)
        for row in table_rows(frontier, results["reference"], terminal=True):
            table.add_row(*(escape(cell) for cell in row))
        terminal.print(table)
        terminal.print(escape(goal_line(results, frontier, bound)), soft_wrap=True)
    for line in skipped_lines(results):
        say(console, line, "yellow")
    say(console, f"report: {out / 'report.md'}")


def skipped_lines(results: dict) -> list[str]:
    return [f"skipped {entry['arm']}: the server refused it ({entry['reason']})"
            for entry in results.get("skipped_arms") or []]


# What the report's tables and marks mean, under the line that says what ran.
REPORT_LEGEND = (
    "(Newcombe's score interval, McNemar's exact test). \"bytes vs model\": expert bytes read per decode token "
    "against the model's own routing of the same decode steps; \"bytes vs ref arm\": against the reference arm's "
    "steps (moves with the decode batch sizes). `*` marks the frontier (no other arm reads a smaller fraction "
    "and is at least as accurate); `goal` marks arms with at least 60 % fewer bytes than the model's routing and "
    "the lower end of the difference's interval at or above -1 point."
)


def report_markdown(results: dict, figures: list[str], bound: LossBound = LossBound()) -> str:
    config = results["config"]
    lines = report.header("Sweep: accuracy against expert bytes per decode token", results)
    lines += [f"{report.what_ran(results)}; {len(config['arms'])} arms interleaved in {config['blocks']} blocks per "
              f"level; {results['seconds']:.0f} s. Differences are paired against `{results['reference']}` on the "
              f"same items {REPORT_LEGEND}", ""]
    for frontier, figure in zip(results["frontiers"], figures):
        lines += [f"## Concurrency {frontier['concurrency']}", "", goal_line(results, frontier, bound), "",
                  fmt.markdown_table(HEADER, table_rows(frontier, results["reference"])), "", f"![{figure}]({figure})", ""]
    if results.get("skipped_arms"):
        lines += ["## Skipped arms", "", *(f"- {line}" for line in skipped_lines(results)), ""]
    return "\n".join(lines + report.versions_section(results["versions"]))
