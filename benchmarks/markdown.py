"""The README's benchmark table from the JSON of ``python -m benchmarks --json FILE``: every figure
of the first run beside its same-run baseline, ratio, target and peers, and the spread of the
ratio across all the runs given (each ratio is taken against its own run's baseline).

    python -m benchmarks.markdown RUN.json [OTHER_RUN.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _number(value: float, unit: str) -> str:
    if unit.endswith("/s") or abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}"


def _ratio(figure: dict[str, Any]) -> str:
    ratio = figure.get("ratio")
    if ratio is None:
        return ""
    return f"{ratio:.0%}" if figure["better"] == "higher" else f"{ratio:.2f}x"


def _target(figure: dict[str, Any]) -> str:
    parts = []
    if figure.get("target") is not None:
        t = figure["target"]
        parts.append(f"≥ {t:.0%}" if figure["better"] == "higher" else f"≤ {t}x")
    if figure.get("limit") is not None:
        sign = "≥" if figure["better"] == "higher" else "<"
        parts.append(f"{sign} {_number(figure['limit'], figure['unit'])}")
    if not parts:
        return ""
    verdict = "met" if figure.get("met") else "**not met**"
    return f"{', '.join(parts)} — {verdict}"


def _spread(key: tuple[str, str], figure: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    ratios = [f["ratio"] for run in runs for f in run["figures"]
              if (f["section"], f["name"]) == key and f.get("ratio") is not None]
    if len(ratios) < 2:
        return ""
    low, high = min(ratios), max(ratios)
    if figure["better"] == "higher":
        return f"{low:.0%} to {high:.0%}"
    return f"{low:.2f}x to {high:.2f}x"


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown: the first run's figures, with the spread of each ratio over every run."""
    first = runs[0]
    machine = first["machine"]
    lines = [
        f"One run of `{first['command']}`, {first['when']}: {machine['cores']} cores ({machine['cpu']}), "
        f"PostgreSQL {machine['postgres']}, Python {machine['python']}; load average "
        f"{machine['load_average_at_start'][0]} at the start, {machine['load_average_at_end'][0]} at the end; "
        f"{first['seconds']['total']} s. Spread: the ratio's range over {len(runs)} runs.",
        "",
        "| figure | agent_runtime | baseline (raw asyncpg, same run) | ratio | spread | target | peers |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for f in first["figures"]:
        value = "" if f["value"] is None else _number(f["value"], f["unit"])
        baseline = "" if f["baseline"] is None else f"{_number(f['baseline'], f['unit'])} ({f['baseline_what']})"
        peers = "; ".join(f"{name} {_number(v, f['unit'])}" for name, v in f.get("peers", {}).items())
        lines.append(f"| {f['section']}: {f['name']} | {value} | {baseline} | {_ratio(f)} | "
                     f"{_spread((f['section'], f['name']), f, runs)} | {_target(f)} | {peers} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.markdown", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="JSON documents of benchmark runs (the first is shown)")
    args = parser.parse_args(argv)
    print(table([json.loads(path.read_text()) for path in args.runs]), end="")


if __name__ == "__main__":
    main()
