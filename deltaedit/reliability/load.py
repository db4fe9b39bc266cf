"""Load: N concurrent edits from many visitors; every request answered or told the queue is full."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import InputError

# ---------------------------------------------------------------- load
from .abuse import GAN_CALL, _with, raw_call
from .server import MAX_GROWTH_MB, check_local_url, percentile, rss_mb


@dataclass
class LoadReport:
    requests: int
    concurrency: int
    answered: int = 0
    queue_full: int = 0  # told so by the server: the bounded queue working as designed
    errors: int = 0  # other error answers
    lost: int = 0  # no answer within the time limit
    latencies_s: list[float] = field(default_factory=list)  # of the answered requests
    wall_s: float = 0.0
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None
    error_messages: list[str] = field(default_factory=list)

    @property
    def p50_s(self) -> float | None:
        return percentile(self.latencies_s, 50)

    @property
    def p95_s(self) -> float | None:
        return percentile(self.latencies_s, 95)

    @property
    def growth_mb(self) -> float | None:
        if self.rss_before_mb is None or self.rss_after_mb is None:
            return None
        return self.rss_after_mb - self.rss_before_mb

    @property
    def passed(self) -> bool:
        accounted = self.answered + self.queue_full + self.errors + self.lost == self.requests
        growth_ok = self.growth_mb is None or self.growth_mb <= MAX_GROWTH_MB
        return accounted and self.lost == 0 and self.errors == 0 and self.answered > 0 and growth_ok


def visitor_address(i: int) -> str:
    """The loopback address of visitor `i` (127.0.1.1, 127.0.1.2, ...): the app counts its
    per-visitor queue limit by address, so a load of many visitors comes from many addresses."""
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def run_load(
    url: str,
    requests: int = 50,
    concurrency: int = 50,
    timeout_s: float = 120.0,
    pid: int | None = None,
    request: Callable[[int], tuple[str, list]] | None = None,
) -> LoadReport:
    """`requests` edits from `concurrency` visitors at a time, all within `timeout_s`; each answered,
    queue-full or lost. Request i comes from visitor i % concurrency (its own loopback address).

    One warm-up edit runs first so that lazily loaded models are not counted as growth. `request(i)`
    gives the i-th request as (api name, values) (default: /edit_gan of the seeded sample i).
    """
    url = check_local_url(url)
    if not 1 <= requests <= 1000 or not 1 <= concurrency <= 200:
        raise InputError("--requests must be 1..1000 and --concurrency 1..200 (this is a local check)")
    if request is None:

        def request(i: int) -> tuple[str, list]:
            return "edit_gan", _with(GAN_CALL, 6, i)

    report = LoadReport(requests, concurrency)
    lock = threading.Lock()
    raw_call(url, *request(requests), source=visitor_address(0))  # warm-up
    report.rss_before_mb = rss_mb(pid) if pid else None
    deadline = time.monotonic() + timeout_s

    def one(i: int) -> None:
        api_name, data = request(i)
        answer = raw_call(
            url, api_name, data, visitor_address(i % concurrency), max(0.1, deadline - time.monotonic())
        )
        with lock:
            if answer.event == "complete":
                report.answered += 1
                report.latencies_s.append(answer.seconds)
            elif answer.status == 503 and "queue is full" in answer.text.lower():
                report.queue_full += 1
            elif answer.event == "lost" or answer.status == 0:
                report.lost += 1
            else:
                report.errors += 1
                report.error_messages.append(f"HTTP {answer.status} {answer.event}: {answer.text[:200]}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(requests)))
    report.wall_s = time.perf_counter() - t0
    report.rss_after_mb = rss_mb(pid) if pid else None
    return report
