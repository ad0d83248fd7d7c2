"""The bench's results: one row per figure, printed as a table, saved as JSON and a PNG chart.

A ``Figure`` holds ours, the baseline (OpenVPN 2.6, or strongSwan for IPsec) and, where it
makes sense, the raw path without a VPN. A missing value is ``None`` and shows as "n/a",
with the reason kept in ``notes``; nothing here raises on a missing figure.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Better = Literal["higher", "lower"]
GROUPS = ("throughput", "cpu per Gbit", "latency", "handshake time", "handshake rate",
          "packet loss", "scale memory", "scale memory per session", "scale rate", "attack",
          "access rules", "ipsec", "fleet failover")


@dataclass
class Figure:
    group: str  # "throughput", "cpu", "latency", "admission", "scale", "ipsec", "fleet ..."
    name: str
    unit: str
    better: Better
    ours: float | None = None
    baseline: float | None = None
    raw: float | None = None  # the path without a VPN, where it applies
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """ours / baseline, as the issue asks (for "lower" figures, < 1 is better)."""
        if self.ours is None or not self.baseline:
            return None
        return self.ours / self.baseline


@dataclass
class Report:
    meta: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def ordered(self) -> list[Figure]:
        """Figures grouped in the order of ``GROUPS``, insertion order within a group."""
        rank = {group: i for i, group in enumerate(GROUPS)}
        return sorted(self.figures, key=lambda f: rank.get(f.group, len(GROUPS)))

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def get(self, group: str, name: str, unit: str, better: Better) -> Figure:
        """The figure with this name, created on first use (runs fill it in over time)."""
        for figure in self.figures:
            if figure.group == group and figure.name == name:
                return figure
        return self.add(Figure(group, name, unit, better))

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "figures": [{**asdict(f), "ratio": f.ratio} for f in self.ordered()],
            "notes": self.notes,
        }


def _cell(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def table(report: Report) -> str:
    """A Markdown table: ours, baseline, ratio ours/baseline, raw path."""
    lines = [
        "| group | figure | unit | better | ours | baseline | ours/baseline | raw path |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for f in report.ordered():
        lines.append(
            f"| {f.group} | {f.name} | {f.unit} | {f.better} | {_cell(f.ours)} | "
            f"{_cell(f.baseline)} | {_cell(f.ratio)} | {_cell(f.raw)} |"
        )
    return "\n".join(lines)


def write(report: Report, out_dir: Path) -> dict[str, Path]:
    """results.json, results.md and results.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md",
             "png": out_dir / "results.png"}
    paths["json"].write_text(json.dumps(report.to_json(), indent=2) + "\n")
    notes = "".join(f"- {n}\n" for n in report.notes)
    paths["md"].write_text(table(report) + "\n\n" + notes)
    chart(report, paths["png"])
    return paths


def chart(report: Report, path: Path) -> None:
    """One panel per group (one unit each): bars for ours and the baseline; the raw path, often
    100x larger, is written into the label instead of drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(f.group for f in report.ordered()))
    if not groups:
        return
    heights = [max(1.5, 0.45 * len([f for f in report.figures if f.group == g]) + 0.8)
               for g in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    series = (("ours", "sslvpn (ours)", "tab:blue"), ("baseline", "baseline", "tab:orange"))
    for ax, group in zip((a[0] for a in axes), groups, strict=True):
        figs = [f for f in report.figures if f.group == group]
        for offset, (attr, label, colour) in enumerate(series):
            values = [getattr(f, attr) for f in figs]
            ys = [i + (offset - 0.5) * 0.4 for i in range(len(figs))]
            ax.barh(ys, [v or 0.0 for v in values], height=0.38, label=label, color=colour)
            for y, v in zip(ys, values, strict=True):
                if attr == "ours" and v is None:
                    ax.text(0, y, " n/a", va="center", fontsize=7)
        ax.set_yticks(range(len(figs)))
        ax.set_yticklabels([_label(f) for f in figs], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(group, fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    axes[0][0].legend(fontsize=7, loc="lower right")
    baseline = report.meta.get("baseline", "OpenVPN 2.6 / strongSwan")
    fig.suptitle(f"sslvpn vs {baseline}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(f: Figure) -> str:
    raw = f", raw {_cell(f.raw)}" if f.raw is not None else ""
    ratio = f", ratio {_cell(f.ratio)}" if f.ratio is not None else ""
    return f"{f.name} [{f.unit}, {f.better} better{ratio}{raw}]"
