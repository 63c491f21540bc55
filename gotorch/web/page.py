"""The HTML of the status page and of a run's page: values in, markup out (pure, no I/O, no clock).

Everything that comes from a task file, a run or the daemon (names, schedules, output, reasons,
errors) is escaped with `html.escape` on its way into the markup, attributes included, and run ids in
links are percent-quoted too: a task printing `<script>` shows the text `<script>`. The pages are
also served with a Content-Security-Policy that allows no script at all (gotorch.web.app), so an
escaping slip could not run one either.

One stylesheet, inline; no JavaScript. The table turns into one card per task on a narrow screen.
Times are shown in the host's zone (as `torch status` does), durations the way a task file writes them.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from gotorch.durations import format_duration, format_span
from gotorch.fire_times import next_fire
from gotorch.history.query import HistoryRow
from gotorch.history.summary import Result, Running
from gotorch.schedule import ScheduleError, parse_schedule
from gotorch.web.words import describe

RECENT = 20  # results shown per task
REFRESH_S = 5  # the status page reloads itself this often
# Statuses with a colour of their own; anything else (spawn_failed, lost) is drawn as "bad".
CELL_CLASSES = {"ok": "ok", "failed": "failed", "timeout": "timeout", "killed": "killed", "skipped": "skipped",
                "missed": "missed"}
LEGEND = ("ok", "failed", "timeout", "killed", "skipped", "missed")


def esc(value: object) -> str:
    """`value` as text safe inside an element or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _href(run_id: str) -> str:
    return "/runs/" + quote(run_id, safe="")


# --- times -----------------------------------------------------------------------------------------


class Clock:
    """Formats instants in one zone, fast: a page of 1,000 tasks has 20,000 of them.

    `datetime.fromtimestamp(ts, zone)` costs microseconds each; instead the zone's offset is looked up
    once per quarter hour of time (every offset change of modern times falls on a quarter hour UTC,
    offsets being whole quarter hours) and the clock time is computed from it.
    """

    def __init__(self, zone: ZoneInfo, now: float) -> None:
        self.zone = zone
        self.now = now
        self._offsets: dict[int, int] = {}
        self._days: dict[int, str] = {}  # local day number -> its prefix, `Nov 30 ` (`2027-01-01 ` another year)
        self.today = self._local(now) // 86400  # the local day number of `now`
        self._year = datetime.fromtimestamp(now, zone).year

    def _offset(self, ts: float) -> int:
        key = int(ts // 900)
        off = self._offsets.get(key)
        if off is None:
            delta = datetime.fromtimestamp(key * 900, self.zone).utcoffset()
            off = int(delta.total_seconds()) if delta is not None else 0
            self._offsets[key] = off
        return off

    def _local(self, ts: float) -> int:
        return math.floor(ts) + self._offset(ts)

    def short(self, ts: float | None) -> str:
        """`12:00:03` today, `Nov 30 12:00:03` another day, `2027-01-01 00:00:00` another year; `-` for none."""
        if ts is None:
            return "-"
        local = self._local(ts)
        day, sod = divmod(local, 86400)
        h, rest = divmod(sod, 3600)
        clock = f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"
        if day == self.today:
            return clock
        prefix = self._days.get(day)
        if prefix is None:
            at = datetime.fromtimestamp(ts, self.zone)
            prefix = at.strftime("%b %d " if at.year == self._year else "%Y-%m-%d ")
            self._days[day] = prefix
        return prefix + clock

    def full(self, ts: float | None) -> str:
        """`2027-03-14 12:00:03 CET`, `-` for none."""
        if ts is None:
            return "-"
        return datetime.fromtimestamp(ts, self.zone).strftime("%Y-%m-%d %H:%M:%S %Z")

    def relative(self, ts: float) -> str:
        """`in 3m`, `5s ago`."""
        delta = ts - self.now
        text = format_span(abs(delta))
        return f"in {text}" if delta >= 0 else f"{text} ago"


def _parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def duration(seconds: float | None) -> str:
    """`4ms`, `2.42s`, `12.5s`, `1m30s`; `-` for none."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    return format_duration(round(seconds))


@lru_cache(maxsize=65536)
def dst_mark(schedule: str, zone: str, next_ts: int) -> str | None:
    """`gap` or `repeat` when the fire at `next_ts` is shifted by a DST change (gotorch.fire_times), else None."""
    try:
        sched = parse_schedule(schedule)
        fire = next_fire(sched, ZoneInfo(zone), datetime.fromtimestamp(next_ts - 1, UTC))
    except (ScheduleError, ValueError, KeyError, OSError):
        return None
    if fire is None or int(fire.at.timestamp()) != next_ts:
        return None
    return fire.dst


# --- per-task figures --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stats:
    """Over a task's recent results: runs among them, how many were ok, and their durations."""

    runs: int
    ok: int
    p50: float | None
    max: float | None

    @property
    def rate(self) -> float | None:
        """Share of the runs that ended ok (skipped and missed fires are not runs); None without runs."""
        return self.ok / self.runs if self.runs else None


def stats(results: Sequence[Result]) -> Stats:
    """Success rate and p50/max duration of the runs in `results` (skipped and missed fires left out)."""
    runs = [r for r in results if r.kind == "run"]
    durations = sorted(r.duration_s for r in runs if r.duration_s is not None)
    p50 = None
    if durations:
        mid = len(durations) // 2
        p50 = durations[mid] if len(durations) % 2 else (durations[mid - 1] + durations[mid]) / 2
    return Stats(len(runs), sum(1 for r in runs if r.status == "ok"), p50, durations[-1] if durations else None)


def result_text(status: str, exit_code: int | None, signal: str | None, reason: str | None) -> str:
    """`failed (exit 3)`, `killed (SIGTERM)`, `skipped (max_instances)`, `ok`: as `torch history` says it."""
    if signal:
        return f"{status} ({signal})"
    if exit_code is not None and status != "ok":
        return f"{status} (exit {exit_code})"
    if reason:
        return f"{status} ({reason})"
    return status


# --- the status page ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusPage:
    """Everything the status page shows, gathered by gotorch.web.feed."""

    host: str
    clock: Clock
    status: Mapping[str, Any] | None  # the daemon's status reply; None if it did not answer
    error: str | None  # why there is no status
    recent: Mapping[str, Sequence[Result]]  # newest first
    running: Mapping[str, Sequence[Running]]
    history_error: str | None = None
    refresh_s: int = REFRESH_S
    # The markup of result cells already drawn, by result: a finished result never changes, and a page
    # of 1,000 tasks has 20,000 cells (drawing them all took 100 ms; looking them up takes 3). The
    # caller keeps it across pages with the same clock zone and day (a cell says "today" by omission).
    cells: dict[Result, str] = field(default_factory=dict)


_CSS = """
:root{--bg:#f6f7f9;--fg:#1f2328;--mute:#656d76;--card:#fff;--line:#d8dee4;--ok:#1a7f37;--failed:#cf222e;
--timeout:#e16f24;--killed:#8250df;--skipped:#afb8c1;--missed:#d4a72c;--bad:#82071e;--accent:#0969da}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--mute:#8d96a0;--card:#161b22;--line:#30363d;
--ok:#3fb950;--failed:#f85149;--timeout:#f0883e;--killed:#a371f7;--skipped:#484f58;--missed:#d29922;
--bad:#ff7b72;--accent:#4493f8}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
header{padding:16px 20px 8px}
h1{margin:0 0 6px;font-size:20px;font-weight:600}h1 .host{color:var(--mute);font-weight:400}
.flame{display:inline-block;width:12px;height:16px;margin-right:8px;border-radius:50% 50% 50% 50%/60% 60% 40% 40%;
background:linear-gradient(#ffb000,#e8590c);vertical-align:-2px}
.meta{color:var(--mute);display:flex;flex-wrap:wrap;gap:4px 14px}.meta b{color:var(--fg);font-weight:600}
.meta span{min-width:0;overflow-wrap:anywhere}
main{padding:8px 20px 24px}
.note{margin:8px 20px;padding:10px 14px;border-radius:8px;border:1px solid var(--line);background:var(--card)}
.note.bad{border-color:var(--failed)}.note.warn{border-color:var(--missed)}
.note ul{margin:6px 0 0;padding-left:18px}
.pill{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;
background:var(--mute)}
.pill.ok{background:var(--ok)}.pill.failed,.pill.bad{background:var(--failed)}.pill.paused{background:var(--missed)}
.pill.timeout{background:var(--timeout)}.pill.killed{background:var(--killed)}.pill.skipped{background:var(--skipped)}
.pill.missed{background:var(--missed)}.pill.running{background:var(--accent)}
table{width:100%;border-collapse:separate;border-spacing:0;background:var(--card);border:1px solid var(--line);
border-radius:10px;overflow:hidden}
th{text-align:left;font-size:12px;font-weight:600;color:var(--mute);text-transform:uppercase;letter-spacing:.03em;
padding:8px 12px;border-bottom:1px solid var(--line)}
td{padding:8px 12px;border-bottom:1px solid var(--line);vertical-align:top}
tr:last-child td{border-bottom:0}
tr.paused td{background:repeating-linear-gradient(135deg,transparent 0 8px,rgba(212,167,44,.08) 8px 16px)}
.name{font-weight:600;word-break:break-all}.type{color:var(--mute);font-size:12px;margin-left:4px}
code{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:var(--mute)}
.words{white-space:nowrap}
.sub{color:var(--mute);font-size:12px}
.dst{font-size:11px;padding:0 5px;border-radius:6px;border:1px solid var(--missed);color:var(--missed);margin-left:4px}
.cells{display:flex;gap:3px;flex-wrap:nowrap}
.c{display:block;width:11px;height:20px;border-radius:3px;background:var(--bad)}
.c:hover{outline:2px solid var(--fg);outline-offset:1px}
.c.ok{background:var(--ok)}.c.failed{background:var(--failed)}.c.timeout{background:var(--timeout)}
.c.killed{background:var(--killed)}.c.skipped{background:var(--skipped)}.c.missed{background:var(--missed)}
.c.none{background:transparent;border:1px dashed var(--line)}
.rate{font-weight:600}.rate.good{color:var(--ok)}.rate.fair{color:var(--timeout)}.rate.poor{color:var(--failed)}
.num{white-space:nowrap;font-variant-numeric:tabular-nums}
.legend{display:flex;flex-wrap:wrap;gap:6px 14px;margin:12px 2px 0;color:var(--mute);font-size:12px}
.legend span{display:inline-flex;align-items:center;gap:5px}.legend .c{width:10px;height:10px}
footer{padding:0 20px 20px;color:var(--mute);font-size:12px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0;background:var(--card);
border:1px solid var(--line);border-radius:10px;padding:12px 16px}
dt{color:var(--mute)}dd{margin:0;word-break:break-word}
h2{font-size:15px;margin:20px 0 8px}
pre{margin:0;padding:12px 14px;background:var(--card);border:1px solid var(--line);border-radius:8px;
font:12px/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-all}
.elided{margin:6px 0;padding:4px 12px;color:var(--mute);font-style:italic;border-left:3px solid var(--missed)}
@media (max-width:760px){
header,main{padding-left:10px;padding-right:10px}.note{margin:8px 10px}
table,tbody,tr,td{display:block;width:100%}thead{display:none}table{border:0;background:none}
tr{background:var(--card);border:1px solid var(--line);border-radius:10px;margin-bottom:10px;padding:4px 0}
td{border:0;padding:4px 12px;display:flex;gap:12px;justify-content:space-between;align-items:baseline}
td::before{content:attr(data-label);color:var(--mute);font-size:12px;flex:none}
td>div{text-align:right;min-width:0}
td.task{font-size:15px}td.task::before{content:none}td.task>div{text-align:left}
.cells{flex-wrap:wrap;justify-content:flex-end}
}
"""


def _head(title: str, refresh_s: int | None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'{refresh}<title>{esc(title)}</title><style>{_CSS}</style></head><body>')


def _cell(r: Result, clock: Clock) -> str:
    cls = CELL_CLASSES.get(r.status, "bad")
    title = result_text(r.status, r.exit_code, r.signal, r.reason) + " · " + clock.short(r.started_at)
    if r.duration_s is not None:
        title += " · " + duration(r.duration_s)
    return f'<a class="c {cls}" href="{esc(_href(r.run_id))}" title="{esc(title)}"></a>'


def _cells(results: Sequence[Result], clock: Clock, memo: dict[Result, str]) -> str:
    shown = list(results[:RECENT])
    shown.reverse()  # oldest on the left, the newest last, as they happened
    blanks = '<span class="c none"></span>' * (RECENT - len(shown))
    out = []
    for r in shown:
        cell = memo.get(r)
        if cell is None:
            cell = memo[r] = _cell(r, clock)
        out.append(cell)
    return f'<div class="cells">{blanks}{"".join(out)}</div>'


def _rate(s: Stats) -> str:
    rate = s.rate
    if rate is None:
        return '<span class="sub">no runs</span>'
    cls = "good" if rate >= 0.95 else "fair" if rate >= 0.8 else "poor"
    return (f'<span class="rate {cls}">{rate * 100:.0f}%</span> '
            f'<span class="sub">{s.ok}/{s.runs}</span>')


def _next(task: Mapping[str, Any], clock: Clock) -> str:
    paused = task.get("paused")
    if paused:
        until = _parse_iso(paused.get("until"))
        return '<span class="pill paused">paused</span>' + (
            f' <span class="sub">until {esc(clock.short(until))}</span>' if until is not None else "")
    ts = _parse_iso(task.get("next_fire"))
    if ts is None:
        return '<span class="sub">-</span>'
    out = f'<span class="num">{esc(clock.short(ts))}</span> <span class="sub">{esc(clock.relative(ts))}</span>'
    mark = dst_mark(str(task.get("schedule") or ""), str(task.get("timezone") or "UTC"), int(ts)) \
        if task.get("schedule") else None
    if mark == "gap":
        out += ('<span class="dst" title="DST: the scheduled wall time does not exist that day; '
                'the fire is shifted to the end of the gap">DST shifted</span>')
    elif mark == "repeat":
        out += '<span class="dst" title="DST: the repeated hour, second pass">DST repeat</span>'
    return out


def _running(task: Mapping[str, Any], runs: Sequence[Running], clock: Clock) -> str:
    if runs:
        parts = []
        for r in runs[:3]:
            since = "" if r.started_at is None else f", {format_span(clock.now - r.started_at)}"
            parts.append(f'<a href="{esc(_href(r.run_id))}"><span class="pill running">pid {esc(r.pid)}</span></a>'
                         f'<span class="sub">{esc(since)}</span>')
        more = f' <span class="sub">+{len(runs) - 3}</span>' if len(runs) > 3 else ""
        return " ".join(parts) + more
    n = int(task.get("running") or 0)
    if n:  # the history has not recorded them (yet, or --no-history): the daemon's count
        return f'<span class="pill running">{n} running</span>'
    return '<span class="sub">-</span>'


def _schedule(task: Mapping[str, Any], host_zone: str) -> str:
    text = task.get("schedule")
    if not text:
        return f'<span class="words">{esc(task.get("type") or "")}</span>'
    words = describe(str(text))
    zone = task.get("timezone")
    tz = f' <span class="sub">{esc(zone)}</span>' if zone and zone != host_zone else ""  # the odd one out only
    if words is None:
        return f"<code>{esc(text)}</code>{tz}"
    return f'<div class="words">{esc(words)}{tz}</div><code>{esc(text)}</code>'


def _row(task: Mapping[str, Any], page: StatusPage) -> str:
    name = str(task.get("name"))
    results = page.recent.get(name, ())
    s = stats(results[:RECENT])
    paused = task.get("paused")
    badge = ""
    if paused:
        why = f"paused by {paused.get('by')}" + (f": {paused.get('reason')}" if paused.get("reason") else "")
        badge = f' <span class="pill paused" title="{esc(why)}">paused</span>'
    kind = task.get("type")
    kind_html = f'<span class="type">{esc(kind)}</span>' if kind and kind != "cron" else ""
    # Each cell's content is one element: on a phone the label and it sit side by side (see _CSS).
    return (f'<tr class="task{" paused" if paused else ""}" data-task="{esc(name)}">'
            f'<td class="task" data-label="Task"><div><span class="name">{esc(name)}</span>{kind_html}{badge}</div>'
            "</td>"
            f'<td data-label="Schedule"><div>{_schedule(task, page.clock.zone.key)}</div></td>'
            f'<td data-label="Next fire"><div>{_next(task, page.clock)}</div></td>'
            f'<td data-label="Running"><div>{_running(task, page.running.get(name, ()), page.clock)}</div></td>'
            f'<td data-label="Last {RECENT}">{_cells(results, page.clock, page.cells)}</td>'
            f'<td data-label="Success" class="num"><div>{_rate(s)}</div></td>'
            f'<td data-label="p50 / max" class="num"><div>{esc(duration(s.p50))} / {esc(duration(s.max))}</div></td>'
            "</tr>")


def _header(page: StatusPage) -> str:
    st = page.status
    clock = page.clock
    out = [f'<header><h1><span class="flame"></span>torch <span class="host">on {esc(page.host)}</span></h1>'
           '<div class="meta">']
    if st is None:
        out.append('<span><span class="pill bad">not answering</span></span>')
    else:
        up = format_span(float(st.get("uptime_s") or 0))
        out.append(f'<span><span class="pill ok">running</span> pid <b>{esc(st.get("pid"))}</b>, up {esc(up)}</span>')
        out.append(f'<span>config <b>{esc(st.get("config"))}</b></span>')
        out.append(f'<span>generation <b>{esc(st.get("generation"))}</b>, hash <code>{esc(st.get("hash"))}</code>'
                   f'</span>')
        lr = st.get("last_reload")
        if lr is None:
            out.append("<span>no reload since start</span>")
        else:
            verdict = '<span class="pill ok">ok</span>' if lr.get("ok") else '<span class="pill failed">failed</span>'
            at = clock.short(_parse_iso(lr.get("at")))
            out.append(f'<span>last reload {verdict} {esc(at)} via {esc(lr.get("trigger"))}</span>')
    out.append(f'<span class="sub">times in {esc(clock.full(clock.now).rsplit(" ", 1)[-1])}, '
               f"page refreshes every {page.refresh_s}s</span></div></header>")
    return "".join(out)


def _notes(page: StatusPage) -> str:
    st = page.status
    out = []
    if st is None:
        out.append(f'<div class="note bad"><b>The daemon does not answer.</b> {esc(page.error or "")}</div>')
        return "".join(out)
    lr = st.get("last_reload")
    if lr is not None and not lr.get("ok"):
        errors = "".join(f"<li>{esc(e.get('message', e) if isinstance(e, dict) else e)}</li>"
                         for e in lr.get("errors") or [])
        retry = f" Retrying at {esc(page.clock.short(_parse_iso(st.get('reload_retry_at'))))}." \
            if st.get("reload_retry_at") else ""
        out.append(f'<div class="note bad"><b>The last reload failed</b>: the previous config keeps running.{retry}'
                   f"<ul>{errors}</ul></div>")
    holds = st.get("paused") or []
    if holds:
        items = []
        for h in holds:
            until = _parse_iso(h.get("until"))
            when = f"until {page.clock.short(until)}" if until is not None else "until resumed"
            why = f" ({h.get('reason')})" if h.get("reason") else ""
            items.append(f"<li><b>{esc(h.get('task'))}</b> {esc(when)}{esc(why)} by {esc(h.get('by'))}</li>")
        out.append(f'<div class="note warn"><b>Paused</b>: fires of these tasks are skipped.<ul>{"".join(items)}'
                   "</ul></div>")
    if page.history_error:
        out.append(f'<div class="note warn"><b>History unreadable</b>: {esc(page.history_error)}</div>')
    return "".join(out)


def render_status(page: StatusPage) -> str:
    """The whole status page."""
    tasks = list(page.status.get("tasks") or []) if page.status is not None else []
    parts = [_head(f"torch · {page.host}", page.refresh_s), _header(page), _notes(page), "<main>"]
    if page.status is not None:
        if tasks:
            parts.append(f'<table class="tasks"><thead><tr><th>Task</th><th>Schedule</th><th>Next fire</th>'
                         f"<th>Running</th><th>Last {RECENT}</th><th>Success</th><th>p50 / max</th></tr></thead>"
                         "<tbody>")
            parts.extend(_row(t, page) for t in tasks)
            parts.append("</tbody></table>")
        else:
            parts.append('<div class="note">No task of the config runs on this host.</div>')
        legend = "".join(f'<span><i class="c {c}"></i>{c}</span>' for c in LEGEND)
        parts.append(f'<div class="legend">{legend}<span><i class="c bad"></i>spawn failed, lost</span>'
                     "<span>success: ok runs of the last 20 results (skipped and missed fires are not runs)</span>"
                     "</div>")
    parts.append('</main><footer>torch status page · read-only · <a href="/metrics">/metrics</a> · '
                 '<a href="/api/status">/api/status</a></footer></body></html>')
    return "".join(parts)


# --- a run's page ------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def visible_text(data: bytes) -> str:
    """Output bytes as text: UTF-8 (invalid bytes replaced), control characters other than newline and
    tab written as \\xNN, as `torch logs` shows them on a terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", data.decode("utf-8", errors="replace"))


def render_run(row: HistoryRow | None, run_id: str, clock: Clock) -> str:
    """The page of one run (or non-run): what it was, how it ended, its output (head, elided, tail)."""
    if row is None:
        return (_head(f"torch · no run {run_id}", None) + '<header><a href="/">&larr; all tasks</a>'
                f"<h1>No run {esc(run_id)}</h1></header>"
                '<main><div class="note">The history has no row with this id (pruned, or never recorded).</div>'
                "</main></body></html>")
    status = result_text(row.status, row.exit_code, row.signal, None)
    cls = "running" if row.status == "running" else CELL_CLASSES.get(row.status, "bad")
    facts: list[tuple[str, str]] = [("status", f'<span class="pill {cls}">{esc(status)}</span>')]
    if row.reason:
        facts.append(("reason", esc(row.reason)))
    facts.append(("kind", esc(row.kind if row.kind != "run" else f"run ({row.trigger or 'schedule'})")))
    if row.attempt > 1:
        facts.append(("attempt", esc(row.attempt)))
    facts.append(("scheduled", esc(clock.full(row.scheduled_at))))
    facts.append(("started", esc(clock.full(row.started_at))))
    if row.kind == "run":
        facts.append(("ended", esc(clock.full(row.ended_at)) if row.ended_at is not None else "still running"))
        facts.append(("duration", esc(duration(row.duration_s))))
    if row.lateness_ms is not None:
        facts.append(("lateness", f"{row.lateness_ms:.1f} ms"))
    facts.append(("run id", f"<code>{esc(row.run_id)}</code>"))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    parts = [_head(f"torch · {row.task} · {status}", REFRESH_S if row.status == "running" else None),
             f'<header><a href="/">&larr; all tasks</a><h1><span class="flame"></span>{esc(row.task)} '
             f'<span class="host">run {esc(row.run_id)}</span></h1></header><main><dl>{dl}</dl>']
    parts.append(_output(row))
    parts.append("</main></body></html>")
    return "".join(parts)


def _output(row: HistoryRow) -> str:
    if row.kind != "run":
        return (f'<h2>Output</h2><div class="note">This fire started no run ({esc(row.status)}): '
                "nothing was printed.</div>")
    out = row.output
    if out is None or not (out.output_head or out.output_tail or out.output_elided):
        said = "no output yet: the run is still running" if row.status == "running" else "no output"
        return f'<h2>Output</h2><div class="note">({esc(said)})</div>'
    if out.output_elided <= 0:  # head and tail are one piece: join the bytes (a character may span them)
        return f'<h2>Output</h2><pre class="out">{esc(visible_text(out.output_head + out.output_tail))}</pre>' + \
            _dropped(out.dropped_bytes)
    parts = ['<h2>Output</h2><pre class="out head">', esc(visible_text(out.output_head)), "</pre>",
             f'<div class="elided">… {out.output_elided:,} bytes elided …</div>']
    if out.output_tail:
        parts.extend(['<pre class="out tail">', esc(visible_text(out.output_tail)), "</pre>"])
    parts.append(_dropped(out.dropped_bytes))
    return "".join(parts)


def _dropped(n: int) -> str:
    if n <= 0:
        return ""
    return (f'<div class="elided">… {n:,} more bytes dropped: printed beyond the task\'s output_limit …</div>')
