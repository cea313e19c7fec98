"""Output for people: tables that fit the terminal, and metrics summarised for reading.

:class:`FittedTable` is a rich renderable that lays itself out at render time for the width it
is given: every cell stays on one line (a value too long is cut with an ellipsis, never broken
across lines), and when even the narrowest layout does not fit, the least important columns are
left out. The CLI, the demo and :func:`agent_runtime.to_table` draw every table with it.

:func:`summarise_metrics` turns the stored rows (one per agent x channel x metric) into one row
per metric, or per metric and agent / channel. Keys of unbounded variety (lock keys such as
``demo.job:13``, inboxes of agents with generated ids) are folded (``demo.job:*``) so that the
number of rows stays bounded whatever ran.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from ..models import MetricSummary, Topology

__all__ = ["Column", "FittedTable", "MetricRow", "fold_key", "metrics_table", "summarise_metrics"]


# ---------------------------------------------------------------------------------------------
# Tables that fit
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A table column. ``priority``: 0 is never left out; higher numbers go first when space is
    short. ``min_width``: narrower than this (or than the header), the column is left out rather
    than squeezed."""

    header: str
    priority: int = 0
    min_width: int = 6
    justify: Literal["left", "right"] = "left"


_GAP = 2  # between columns: one space of padding and SIMPLE_HEAD's (blank) divider; none at the edges


class FittedTable:
    """Rows of :class:`rich.text.Text` cells laid out for the width they are rendered at."""

    def __init__(self, title: str, columns: Sequence[Column], rows: Sequence[Sequence[Text]], *,
                 empty: str | None = None) -> None:
        self.title = title
        self.columns = list(columns)
        self.rows = [list(row) for row in rows]
        self.empty = empty

    def layout(self, width: int) -> tuple[list[int], list[int]]:
        """The kept column indexes and their widths for a total ``width``."""
        natural = [max([len(c.header), *(self.rows[r][i].cell_len for r in range(len(self.rows)))])
                   for i, c in enumerate(self.columns)]
        floor = [min(natural[i], max(c.min_width, len(c.header))) for i, c in enumerate(self.columns)]
        keep = list(range(len(self.columns)))

        def room() -> int:
            return width - _GAP * (len(keep) - 1)

        def essential(i: int) -> bool:
            return self.columns[i].priority == 0

        # Leave out columns, least important (then rightmost) first, until the essential columns fit
        # whole beside the others at their narrowest.
        while sum(natural[i] if essential(i) else floor[i] for i in keep) > room():
            droppable = [i for i in keep if not essential(i)]
            if not droppable:
                break
            keep.remove(max(droppable, key=lambda i: (self.columns[i].priority, i)))
        while True:
            widths = self._squeeze(keep, natural, floor, room())
            # Rather than cut a column, leave out one that matters less.
            cut = [self.columns[i].priority for i in keep if widths[i] < natural[i]]
            less = [i for i in keep if cut and self.columns[i].priority > min(cut)]
            if not less:
                return keep, [widths[i] for i in keep]
            keep.remove(max(less, key=lambda i: (self.columns[i].priority, i)))

    def _squeeze(self, keep: list[int], natural: list[int], floor: list[int], room: int) -> dict[int, int]:
        """Widths that fit ``room``: the least important (then widest) column is cut first, never
        below its floor."""
        widths = {i: natural[i] for i in keep}
        while sum(widths.values()) > room:
            squeezable = [i for i in keep if widths[i] > floor[i]]
            if not squeezable:
                break
            widths[max(squeezable, key=lambda i: (self.columns[i].priority, widths[i]))] -= 1
        return widths

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.rows and self.empty is not None:
            yield Text(self.empty)
            return
        keep, widths = self.layout(options.max_width)
        table = Table(title=self.title or None, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                      pad_edge=False, padding=(0, 1, 0, 0), show_edge=False, expand=False)
        for i, w in zip(keep, widths, strict=True):
            column = self.columns[i]
            table.add_column(column.header, width=w, no_wrap=True, overflow="ellipsis", justify=column.justify)
        for row in self.rows:
            table.add_row(*(row[i] for i in keep))
        yield table


# ---------------------------------------------------------------------------------------------
# Metrics for people
# ---------------------------------------------------------------------------------------------

Grouping = Literal["metric", "agent", "channel"]

# The variable part of keys such as `demo.job:13`, `task:9f2c61ab`, `agent:worker-1-8bf5fc64`: a
# UUID, a hex id of 6+ characters with a digit in it, or a number, each standing alone (not part of
# a word, so `v1` in `news/v1` stays).
_VARIABLE = re.compile(
    r"(?<![0-9A-Za-z])(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|(?=[0-9a-f]*[0-9])[0-9a-f]{6,}|\d+)(?![0-9A-Za-z])")
BUCKET = timedelta(minutes=1)  # the database's metric bucket


def fold_key(key: str) -> str:
    """``demo.job:13`` -> ``demo.job:*``: numbers and generated ids become ``*``."""
    return _VARIABLE.sub("*", key)


def is_timing(metric: str) -> bool:
    """Figures in milliseconds (``latency.end_to_end_ms``, ``lock.wait_ms``...) as opposed to counters."""
    return metric.endswith(("_ms", ".ms"))


@dataclass(frozen=True)
class MetricRow:
    """One summarised metric. ``total``: how many (a counter's sum; for a timing, how many were
    timed). ``rate``: ``total`` per second over the span that has data. ``mean``/``min``/``max``:
    for timings, in their unit; None for counters."""

    metric: str
    group: str | None
    total: float
    rate: float | None
    mean: float | None
    min: float | None
    max: float | None
    count: int
    sum: float

    def as_dict(self, by: Grouping) -> dict[str, object]:
        row: dict[str, object] = {"metric": self.metric}
        if by != "metric":
            row[by] = self.group
        row |= {"total": self.total, "rate_per_s": self.rate, "mean": self.mean, "min": self.min,
                "max": self.max, "count": self.count, "sum": self.sum}
        return row


def data_span(rows: Iterable[MetricSummary]) -> float | None:
    """Seconds from the first bucket with data to the end of the last one."""
    firsts = [r.first_bucket for r in rows if r.first_bucket is not None]
    lasts = [r.last_bucket for r in rows if r.last_bucket is not None]
    if not firsts or not lasts:
        return None
    return (max(lasts) + BUCKET - min(firsts)).total_seconds()


def summarise_metrics(rows: Sequence[MetricSummary], by: Grouping = "metric", *,
                      span: float | None = None) -> list[MetricRow]:
    """One row per metric (``by="metric"``), or per metric and agent / folded channel."""
    span = span if span is not None else data_span(rows)
    groups: dict[tuple[str, str | None], list[MetricSummary]] = {}
    for r in rows:
        group = None if by == "metric" else r.agent_id if by == "agent" else fold_key(r.channel) or "-"
        groups.setdefault((r.metric, group), []).append(r)
    summary = []
    for (metric, group), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        count = sum(m.count for m in members)
        total_sum = sum(m.sum for m in members)
        timing = is_timing(metric)
        total = float(count) if timing else total_sum
        mins = [m.min for m in members if m.min is not None]
        maxes = [m.max for m in members if m.max is not None]
        summary.append(MetricRow(
            metric=metric, group=group, total=total, rate=total / span if span else None,
            mean=total_sum / count if timing and count else None,
            min=min(mins) if timing and mins else None, max=max(maxes) if timing and maxes else None,
            count=count, sum=total_sum))
    return summary


def _amount(value: float | None, unit: str = "") -> Text:
    if value is None:
        return Text("-", style="dim")
    if value == int(value) and abs(value) < 1e15:
        text = f"{int(value):,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    else:
        text = f"{value:.3g}"
    return Text(text + unit)


def metrics_table(summary: Sequence[MetricRow], by: Grouping = "metric", *, title: str = "metrics",
                  empty: str = "no metrics") -> FittedTable:
    """The summary as a table: metric, [agent | channel], total, per s, mean, min, max."""
    columns = [Column("metric", 0, 14)]
    if by != "metric":
        columns.append(Column(by, 0, 12))
    columns += [Column("total", 0, 5, "right"), Column("per s", 2, 5, "right"), Column("mean", 1, 6, "right"),
                Column("min", 4, 6, "right"), Column("max", 3, 6, "right")]
    rows = []
    for m in summary:
        unit = " ms" if is_timing(m.metric) and m.metric.endswith("ms") else ""
        cells = [Text(m.metric, style="bold")]
        if by != "metric":
            cells.append(Text(m.group or "-"))
        cells += [_amount(m.total), _amount(None if m.rate is None else round(m.rate, 3 if m.rate < 10 else 1)),
                  _amount(m.mean, unit), _amount(m.min, unit), _amount(m.max, unit)]
        rows.append(cells)
    return FittedTable(title, columns, rows, empty=empty)


# ---------------------------------------------------------------------------------------------
# Rich tables
# ---------------------------------------------------------------------------------------------

_STATUS_STYLES = {"online": "green", "busy": "yellow", "away": "yellow", "offline": "dim", "unlisted": "dim"}


def _ago(when: datetime | None, now: datetime) -> Text:
    if when is None:
        return Text("-", style="dim")
    seconds = (when - now).total_seconds()
    amount = abs(seconds)
    if amount < 1:
        return Text("now")
    if amount < 120:
        text = f"{amount:.0f}s"
    elif amount < 7200:
        text = f"{amount / 60:.0f}m"
    else:
        text = f"{amount / 3600:.0f}h"
    return Text(f"in {text}" if seconds > 0 else f"{text} ago")


def _table(title: str, columns: list[Column], rows: list[list[Text]]) -> FittedTable:
    return FittedTable(title, columns, rows, empty=f"{title}: none")


def topology_table(topo: Topology) -> RenderableType:
    """The topology as tables (agents, channels, subscriptions, flows and locks) that fit the width
    they are printed at: cells are cut with an ellipsis, never wrapped, and the least important
    columns are left out on a narrow terminal.

    Names are shown literally (never read as rich markup). Times are relative to the document's
    ``generated_at``, the database's clock."""
    now = topo.generated_at
    agents = _table(f"Agents ({len(topo.agents)})", [
        Column("id", 0, 12), Column("name", 1, 8), Column("kind", 6), Column("status", 0),
        Column("capabilities", 4), Column("host", 5), Column("last seen", 2)], [
        [Text(a.id, style="bold"), Text(a.name), Text(a.kind), Text(a.status, style=_STATUS_STYLES.get(a.status, "")),
         Text(", ".join(a.capabilities)),
         Text(":".join(part for part in (a.host, "" if a.pid is None else str(a.pid)) if part)),
         _ago(a.last_seen, now)] for a in topo.agents])

    subscribers: dict[str, int] = {}
    for sub in topo.subscriptions:
        subscribers[sub.channel] = subscribers.get(sub.channel, 0) + 1
    channels = _table(f"Channels ({len(topo.channels)})", [
        Column("name", 0, 12), Column("kind", 0), Column("owner", 3, 10), Column("last seq", 1, justify="right"),
        Column("subscribers", 2, justify="right")], [
        [Text(c.name, style="bold"), Text(c.kind), Text(c.owner_id or ""), Text(str(c.last_seq)),
         Text(str(subscribers.get(c.name, 0)))] for c in topo.channels])

    subs = _table(f"Subscriptions ({len(topo.subscriptions)})", [
        Column("channel", 0, 12), Column("agent", 0, 12), Column("cursor", 2, justify="right"),
        Column("lag", 1, justify="right")], [
        [Text(s.channel), Text(s.agent_id), Text(str(s.cursor)), Text("-" if s.lag is None else str(s.lag))]
        for s in topo.subscriptions])

    flows = _table(f"Flows over the last {topo.window_ms / 1000:g} s ({len(topo.flows)})", [
        Column("from", 0, 12), Column("channel", 0, 12), Column("to", 1, 10), Column("messages", 0, justify="right"),
        Column("bytes", 3, justify="right"), Column("last", 2)], [
        [Text(f.from_agent), Text(f.channel), Text(f.to_agent or ""), Text(str(f.messages)), Text(str(f.bytes)),
         _ago(f.last_at, now)] for f in topo.flows])

    locks = _table(f"Locks ({len(topo.locks)})", [
        Column("key", 0, 12), Column("owner", 0, 10), Column("token", 1, justify="right"), Column("acquired", 3),
        Column("expires", 2)], [
        [Text(lock.key, style="bold"), Text(lock.owner_id), Text(str(lock.token)), _ago(lock.acquired_at, now),
         _ago(lock.expires_at, now)] for lock in topo.locks])

    header = Text(f"agent_runtime topology at {now.isoformat(timespec='seconds')}", style="bold")
    return Group(header, agents, channels, subs, flows, locks)
