"""`lynx-sglang calibrate`'s report.md and results.json: the evidence for each band's choice and the
confirmation on held-out items."""

from __future__ import annotations

import yaml

from . import fmt, report
from .provenance import checkpoint_identity, write_json


# Below this accuracy the baseline answers (almost) nothing: no setting can lose accuracy it does not
# have, so every candidate is "within the bound" and the choice says nothing about accuracy.
LOW_BASELINE_ACCURACY = 0.05


def baseline_warning(sweep_results: dict) -> str | None:
    """A warning when the reference arm's accuracy is below LOW_BASELINE_ACCURACY at some level."""
    reference = sweep_results["reference"]
    low = [(f["concurrency"], p["accuracy"]) for f in sweep_results["frontiers"] for p in f["points"]
           if p["arm"] == reference and p.get("accuracy") is not None and p["accuracy"] < LOW_BASELINE_ACCURACY]
    if not low:
        return None
    levels = ", ".join(f"{fmt.pct(accuracy)} at concurrency {level}" for level, accuracy in low)
    return (f"the model's own routing ({reference}) answers {levels} of the calibration items correctly, below "
            f"{fmt.pct(LOW_BASELINE_ACCURACY, 0)}: no setting can lose accuracy the model does not have, so this "
            "calibration says nothing about accuracy (check --task, --score and --max-tokens against the model)")


def band_range(bands, index: int) -> str:
    start = bands[index].from_rows
    return f"{start}+ rows" if index == len(bands) - 1 else f"{start}-{bands[index + 1].from_rows - 1} rows"


def band_records(choice: dict) -> list[dict]:
    bands = choice["bands"]
    chosen = {c.band: c for c in choice["choices"]}
    records = []
    for index, band in enumerate(bands):
        c = chosen.get(band)
        records.append({"rows": band_range(bands, index), "from_rows": band.from_rows, "level": band.level,
                        "arm": c.arm["label"] if c else None, "bytes_fraction": c.bytes_fraction if c else None,
                        "accuracy_diff": c.accuracy_diff if c else None,
                        "accuracy_diff_ci": list(c.accuracy_diff_ci) if c else None})
    return records


def confirmation_records(confirmation: dict | None, max_loss: float) -> list[dict]:
    if confirmation is None:
        return []
    records = []
    for c in confirmation["comparisons"]:
        records.append({"concurrency": c["concurrency"], "items": c["items"], "accuracy_baseline": c["accuracy_a"],
                        "accuracy_calibrated": c["accuracy_b"], "accuracy_diff": c["accuracy_diff"],
                        "accuracy_diff_ci": c["accuracy_diff_ci"], "bytes_fraction": c["expert_bytes_fraction_b"],
                        "tpot_median_ratio": c.get("tpot_median_ratio"),
                        "holds": c["accuracy_diff_ci"][0] >= -max_loss / 100 - 1e-12})
    return records


def candidate_rows(sweep_results: dict, level: int, floor_points: float, chosen_label: str | None) -> list[list[str]]:
    frontier = next(f for f in sweep_results["frontiers"] if f["concurrency"] == level)
    rows = []
    for p in frontier["points"]:
        if p["arm"] == sweep_results["reference"]:
            continue
        eligible = p["bytes_fraction"] is not None and 100 * p["accuracy_diff_ci"][0] >= floor_points - 1e-9
        rows.append([p["arm"], fmt.fewer(p["bytes_fraction"]),
                     f"{fmt.points(p['accuracy_diff'])} {fmt.interval_points(p['accuracy_diff_ci'])}",
                     "yes" if eligible else "no", "**chosen**" if p["arm"] == chosen_label else ""])
    return rows


def report_markdown(args, config: dict, choice: dict, sweep_results: dict, results: dict) -> str:
    floor = choice["floor_points"]
    lines = ["# Calibration", "", f"`{results['command']}`", ""]
    if results.get("warning"):
        lines += [f"**Warning**: {results['warning']}.", ""]
    lines += [
        f"{sweep_results['date']}, {sweep_results['versions']['machine']}, model "
        f"{report.model_text(results['model'])}; task {args.task}: "
        f"{results['calibration_items']} calibration items, {results['confirmation_items']} held-out items for "
        f"the confirmation; {results['seconds'] / 60:.1f} minutes in all.", "",
        f"Rule: per band, the candidate with the fewest expert bytes (fraction of the model's own routing of "
        f"the same steps) whose accuracy difference against baseline has the lower end of its 95 % interval "
        f"at or above {floor:+.2f} points (max loss {args.max_loss:g}, margin {args.margin:g}); one policy "
        "for every band, the one reading the fewest bytes on average.", "",
        "## The config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    lines += ["## Bands", ""]
    for record, band in zip(results["bands"], choice["bands"]):
        lines += [f"### {record['rows']} (measured at concurrency {band.level})", "",
                  fmt.markdown_table(["candidate", "bytes vs model", "diff pts [95 % CI]", "within bound", ""],
                                     candidate_rows(sweep_results, band.level, floor, record["arm"])), "",
                  f"![frontier](sweep/frontier_c{band.level}.png)", ""]
    lines += ["## Policies", "", fmt.markdown_table(["policy", "mean bytes vs model over the bands"], [
        [policy, "no candidate within the bound in some band" if score is None else fmt.pct(score)]
        for policy, score in choice["candidates"].items()]), ""]
    lines += confirmation_section(results, args.max_loss)
    return "\n".join(lines + report.versions_section(sweep_results["versions"]))


def confirmation_section(results: dict, max_loss: float) -> list[str]:
    lines = ["## Confirmation on held-out items", ""]
    if not results["confirmation"]:
        return lines + ["No candidate stayed within the bound in every band: the config is baseline, nothing to "
                        "confirm. The interval narrows with the number of items: see the widths above, and give "
                        "more calibration items (`--n`) or a looser `--max-loss`.", ""]
    rows = [[str(c["concurrency"]), str(c["items"]), fmt.pct(c["accuracy_baseline"]), fmt.pct(c["accuracy_calibrated"]),
             f"{fmt.points(c['accuracy_diff'])} {fmt.interval_points(c['accuracy_diff_ci'])}",
             fmt.fewer(c["bytes_fraction"]), fmt.ratio(c["tpot_median_ratio"]), "holds" if c["holds"] else "**fails**"]
            for c in results["confirmation"]]
    return lines + [fmt.markdown_table(["concurrency", "items", "baseline", "calibrated", "diff pts [95 % CI]",
                                        "expert bytes vs the model's routing", "TPOT ratio", f"-{max_loss:g} pt bound"], rows), "",
                    "![accuracy against bytes](confirm/accuracy_vs_expert_bytes.png)", ""]


def publish(args, out, config: dict, choice: dict, sweep_results: dict, confirmation: dict | None, seconds: float,
            warning: str | None = None):
    results = {
        "tool": "lynx-sglang calibrate", "command": getattr(args, "command", "lynx-sglang calibrate"),
        "model": {"url": args.url} if args.url else checkpoint_identity(args.model_path),
        "seconds": seconds, "max_loss_points": args.max_loss, "margin_points": args.margin,
        "calibration_items": sweep_results["config"]["n"],
        "confirmation_items": confirmation["config"]["n"] if confirmation else 0,
        "config": config, "policy_scores": choice["candidates"], "bands": band_records(choice),
        "confirmation": confirmation_records(confirmation, args.max_loss), "warning": warning,
    }
    write_json(out / "results.json", results)
    (out / "report.md").write_text(report_markdown(args, config, choice, sweep_results, results))
    for record in results["confirmation"]:
        verdict = "holds" if record["holds"] else "FAILS"
        print(f"c={record['concurrency']}: accuracy {fmt.points(record['accuracy_diff'])} points "
              f"{fmt.interval_points(record['accuracy_diff_ci'])}, {fmt.fewer(record['bytes_fraction'])} expert bytes "
              f"than the model's routing on the same steps: the {args.max_loss:g}-point bound {verdict}")
    if warning:
        print(f"warning: {warning}")
    print(f"report: {out / 'report.md'}; config: {out / 'lynx-config.yaml'}")

