"""PNG figures of an experiment (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .analysis import ArmData  # noqa: E402


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _error_bars(summary: dict) -> tuple[float, list[float]]:
    accuracy = summary["accuracy"]
    low, high = summary["accuracy_ci"]
    return 100 * accuracy, [100 * (accuracy - low), 100 * (high - accuracy)]


def accuracy_vs_bytes(summaries: list[dict], path: Path) -> str:
    """Each arm at each level: accuracy (95 % interval) against expert MB read per decode token."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    arms = list(dict.fromkeys(s["arm"] for s in summaries))
    markers = "osD^v<>pX*"
    for level_index, level in enumerate(sorted({s["concurrency"] for s in summaries})):
        for arm_index, arm in enumerate(arms):
            summary = next((s for s in summaries if s["arm"] == arm and s["concurrency"] == level), None)
            if summary is None or summary["server"]["expert_bytes_per_decode_token_after"] is None:
                continue
            y, yerr = _error_bars(summary)
            ax.errorbar(summary["server"]["expert_bytes_per_decode_token_after"] / 1e6, y,
                        yerr=np.array(yerr).reshape(2, 1), fmt=markers[arm_index % len(markers)],
                        color=f"C{level_index}", capsize=3,
                        label=f"{arm}, c={level}")
    ax.set_xlabel("expert weights read per decode token (MB)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy against expert bytes per decode token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def experts_per_layer(summaries: list[dict], path: Path) -> str:
    """Distinct experts per decode step in each layer: bars after each arm's policy, ticks for the
    model's own routing of the same steps."""
    levels = sorted({s["concurrency"] for s in summaries})
    fig, axes = plt.subplots(1, len(levels), figsize=(4.5 * len(levels), 3.8), squeeze=False)
    arms = list(dict.fromkeys(s["arm"] for s in summaries))
    width = 0.8 / max(1, len(arms))
    for ax, level in zip(axes[0], levels):
        for arm_index, arm in enumerate(arms):
            summary = next((s for s in summaries if s["arm"] == arm and s["concurrency"] == level), None)
            if summary is None:
                continue
            layers = summary["server"]["layers"]
            x = np.arange(len(layers)) + arm_index * width
            after = [layer["distinct_experts_after"] or 0 for layer in layers]
            before = [layer["distinct_experts_before"] or 0 for layer in layers]
            ax.bar(x, after, width, label=f"{arm}", color=f"C{arm_index}")
            ax.scatter(x, before, marker="_", s=200, color="black", zorder=3,
                       label="model's routing" if arm_index == 0 else None)
        ax.set_xticks(np.arange(len(layers)) + width * (len(arms) - 1) / 2, [str(layer["layer"]) for layer in layers])
        ax.set_xlabel("MoE layer")
        ax.set_ylabel("distinct experts per decode step")
        ax.set_title(f"concurrency {level}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def latency_distributions(data: dict[tuple[int, str], ArmData], path: Path) -> str:
    """Empirical CDFs of TTFT, TPOT and end-to-end latency, one row per concurrency level."""
    levels = sorted({level for level, _ in data})
    arms = list(dict.fromkeys(arm for _, arm in data))
    metrics = (("ttft_ms", "time to first token (ms)"), ("tpot_ms", "time per output token (ms)"),
               ("e2e_ms", "end-to-end latency (ms)"))
    fig, axes = plt.subplots(len(levels), 3, figsize=(12, 3 * len(levels)), squeeze=False)
    for row, level in enumerate(levels):
        for col, (metric, label) in enumerate(metrics):
            ax = axes[row][col]
            for arm_index, arm in enumerate(arms):
                if (level, arm) not in data:
                    continue
                values = np.sort([v for v in getattr(data[(level, arm)], metric).values() if v is not None])
                if values.size:
                    ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", color=f"C{arm_index}",
                            label=arm)
            ax.set_xlabel(label)
            ax.set_ylabel(f"fraction of requests (c={level})")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def frontier(points: list[dict], level: int, path: Path, *, reference: str, x_key: str = "bytes_fraction") -> str:
    """Accuracy against the expert bytes read per decode token (as a fraction of the model's own
    routing of the same steps) at one level: the frontier joined by a line, dominated arms hollow and
    grey, the reference's 1-point band shaded. Arms are numbered on the plot and named in a numbered
    legend, and a second panel zooms on the arms within 2 points of the reference, where they crowd."""
    points = sorted((p for p in points if p[x_key] is not None), key=lambda p: p[x_key])
    ref = next((p for p in points if p["arm"] == reference), None)
    near = [p for p in points if ref is not None and p is not ref and p["accuracy"] >= ref["accuracy"] - 0.02]
    panels = 2 if ref is not None and 1 < len(near) < len(points) - 1 else 1
    fig, axes = plt.subplots(1, panels + 1, figsize=(6.5 * panels + 3, 5.5), squeeze=False,
                             gridspec_kw={"width_ratios": [3] * panels + [1.4]})
    for ax in axes[0][:panels]:
        _frontier_panel(ax, points, ref, x_key)
    axes[0][0].set_title(f"concurrency {level} (filled: frontier; hollow: dominated)", fontsize=9)
    if panels == 2:
        zoom = axes[0][1]
        xlim, ylim = zoom_limits(near, ref, x_key)
        zoom.set_xlim(*xlim)
        zoom.set_ylim(*ylim)
        zoom.set_title("zoom: the arms within 2 points of the reference", fontsize=9)
    legend = axes[0][-1]
    legend.axis("off")
    legend.text(0, 1, "\n".join(legend_lines(points, reference)), va="top", family="monospace", fontsize=6.5,
                transform=legend.transAxes)
    return _save(fig, path)


def zoom_limits(near: list[dict], ref: dict, x_key: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """The zoom panel's (x, y) limits: the arms near the reference and the 2 points below it. Their
    accuracies bound the view, not their intervals: on a small run those span many points, and a view
    that held them showed arms far below the reference as well."""
    xs = [p[x_key] for p in near]
    accuracies = [100 * p["accuracy"] for p in near] + [100 * ref["accuracy"]]
    pad_x = 0.05 * (max(xs) - min(xs) or 1)
    return (min(xs) - pad_x, max(xs) + pad_x), (min(accuracies + [accuracies[-1] - 2]) - 0.5, max(accuracies) + 0.5)


def legend_lines(points: list[dict], reference: str) -> list[str]:
    """The numbered legend: the number drawn beside each arm (in the order of `points`) and its name."""
    return [f"{number:>2}  {p['arm']}" + ("  (reference)" if p["arm"] == reference else "")
            for number, p in enumerate(points, 1)]


def _frontier_panel(ax, points: list[dict], ref: dict | None, x_key: str) -> None:
    front = [p for p in points if p["on_frontier"]]
    if front:
        ax.plot([p[x_key] for p in front], [100 * p["accuracy"] for p in front], color="C0", alpha=0.6, zorder=1)
    for number, p in enumerate(points, 1):
        y = 100 * p["accuracy"]
        yerr = [[100 * (p["accuracy"] - p["accuracy_ci"][0])], [100 * (p["accuracy_ci"][1] - p["accuracy"])]]
        color = "C3" if p is ref else "C0" if p["on_frontier"] else "0.6"
        style = dict(color=color) if p["on_frontier"] else dict(color=color, mfc="white")
        ax.errorbar(p[x_key], y, yerr=yerr, fmt="o", capsize=2, zorder=2, **style)
        ax.annotate(str(number), (p[x_key], y), textcoords="offset points", xytext=(3, 3), fontsize=7,
                    color="black" if p["on_frontier"] else "0.5", clip_on=True)
    if ref is not None:
        ax.axhspan(100 * ref["accuracy"] - 1, 100 * ref["accuracy"], color="C2", alpha=0.12,
                   label=f"within 1 point of {ref['arm']}")
        ax.axvline(0.4, color="C2", linestyle=":", label="60 % fewer bytes")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("expert bytes per decode token, fraction of the model's routing", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
