"""The reliability run as a plain-text table."""

from __future__ import annotations

# ---------------------------------------------------------------- report
from .abuse import MAX_ABUSE_DISK_MB, MAX_ABUSE_MEMORY_MB, MAX_LEGIT_P50_S, AbuseReport
from .hostile import CaseResult
from .load import LoadReport
from .server import MAX_GROWTH_MB, LaunchedApp


def format_report(
    cases: list[CaseResult],
    load: LoadReport | None,
    app: LaunchedApp | None = None,
    abuse: AbuseReport | None = None,
) -> str:
    """A plain-text table: hostile cases tried/passed per group, failures, the abuse run, then the load."""
    lines = []
    cases = cases + (abuse.cases if abuse else [])
    if cases:
        lines += ["hostile input", f"  {'group':<10}{'tried':>7}{'passed':>8}"]
        for group in dict.fromkeys(c.group for c in cases):
            mine = [c for c in cases if c.group == group]
            lines.append(f"  {group:<10}{len(mine):>7}{sum(c.passed for c in mine):>8}")
        lines.append(f"  {'total':<10}{len(cases):>7}{sum(c.passed for c in cases):>8}")
        lines += [f"  FAILED {c.name}: {c.detail}" for c in cases if not c.passed]

    def fmt(value, unit):
        return "n/a" if value is None else f"{value:.{2 if unit == 's' else 0}f} {unit}"

    if abuse is not None:
        lines += ["abuse (rows of issue 25 from one visitor while another edits toy faces)"]
        lines += [
            f"  {'ok ' if c.passed else 'BAD'} {c.name} ({c.seconds:.1f} s): {c.detail}" for c in abuse.cases
        ]
        lines += [
            f"  legitimate visitor: {len(abuse.legit_latencies_s)} edits, p50 {fmt(abuse.legit_p50_s, 's')}"
            f" (limit {MAX_LEGIT_P50_S:g} s), lost {abuse.legit_lost}, errors {len(abuse.legit_errors)}",
            f"  server RSS start {fmt(abuse.rss_start_mb, 'MB')}, peak {fmt(abuse.rss_peak_mb, 'MB')},"
            f" growth {fmt(abuse.memory_growth_mb, 'MB')} (limit {MAX_ABUSE_MEMORY_MB:.0f} MB)",
            f"  upload folder start {abuse.disk_start_mb:.1f} MB, peak {abuse.disk_peak_mb:.1f} MB,"
            f" growth {abuse.disk_peak_mb - abuse.disk_start_mb:.1f} MB (limit {MAX_ABUSE_DISK_MB:.0f} MB)",
            f"  {'PASSED' if abuse.passed else 'FAILED'}",
        ]
        lines += [f"  legitimate error: {e}" for e in abuse.legit_errors[:3]]
    if load is not None:
        lines += [
            "load",
            f"  requests {load.requests} (concurrency {load.concurrency}) in {load.wall_s:.1f} s",
            f"  answered {load.answered}, queue full {load.queue_full}, errors {load.errors}, lost {load.lost}",
            f"  latency p50 {fmt(load.p50_s, 's')}, p95 {fmt(load.p95_s, 's')}",
            f"  server RSS before {fmt(load.rss_before_mb, 'MB')}, after {fmt(load.rss_after_mb, 'MB')},"
            f" growth {fmt(load.growth_mb, 'MB')} (limit {MAX_GROWTH_MB:.0f} MB)",
        ]
        lines += [f"  error: {m}" for m in load.error_messages[:5]]
        lines.append(f"  {'PASSED' if load.passed else 'FAILED'}")
    if app is not None and app.leftovers_after_stop is not None:
        left = app.leftovers_after_stop
        lines.append(f"temp folders after stop: {'none left' if not left else 'LEFT ' + ', '.join(left)}")
    return "\n".join(lines)
