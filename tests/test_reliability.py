"""`python -m deltaedit reliability` and `deltaedit.reliability`: a short load run against the session's
shared app server; the full run (launched app, hostile cases, 50 concurrent requests) is `slow`.
"""

from __future__ import annotations

import re

import pytest
from app_server import app_url, shared_server, toy_weights_env  # noqa: F401 - the session's server fixture

from deltaedit import cli, reliability
from deltaedit.errors import InputError

pytest.importorskip("gradio_client")


@pytest.mark.parametrize("url", ["http://example.com:7860/", "https://10.0.0.5/", "file:///etc/passwd"])
def test_only_this_machine_is_ever_loaded(url):
    with pytest.raises(InputError, match="only run against this machine"):
        reliability.check_local_url(url)
    with pytest.raises(InputError):
        reliability.run_load(url, requests=1, concurrency=1)


def test_report_accounts_for_every_request():
    report = reliability.LoadReport(requests=5, concurrency=5, answered=3, queue_full=2)
    report.latencies_s = [1.0, 2.0, 3.0]
    report.rss_before_mb, report.rss_after_mb = 500.0, 650.0
    assert report.passed and report.p50_s == 2.0 and 2.8 < report.p95_s <= 3.0 and report.growth_mb == 150
    report.rss_after_mb = 900.0  # grew 400 MB > 300 MB
    assert not report.passed
    lost = reliability.LoadReport(requests=5, concurrency=5, answered=4, lost=1, latencies_s=[1.0] * 4)
    assert not lost.passed
    text = reliability.format_report([], report)
    assert "queue full 2" in text and "growth 400 MB" in text and "FAILED" in text


def test_short_load_run_answers_every_request(app_url, capsys):  # noqa: F811
    pid = shared_server().process.pid
    code = cli.main(
        ["reliability", "--url", app_url, "--pid", str(pid), "--skip-hostile"]
        + ["--requests", "8", "--concurrency", "8", "--timeout-s", "90"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    answered, queue_full, errors, lost = map(
        int, re.search(r"answered (\d+), queue full (\d+), errors (\d+), lost (\d+)", out).groups()
    )
    assert answered + queue_full == 8 and errors == lost == 0 and answered >= 1
    growth = float(re.search(r"growth (-?\d+) MB", out).group(1))
    assert growth <= reliability.MAX_GROWTH_MB
    assert re.search(r"latency p50 [\d.]+ s, p95 [\d.]+ s", out)


@pytest.mark.slow
def test_full_reliability_run_on_a_launched_app(capsys):
    """Hostile cases with the file checks, 50 concurrent requests (> the queue's 32), clean stop."""
    env = toy_weights_env()
    if env is None:
        pytest.skip("toy weights are absent")
    argv = ["reliability", "--launch", "--requests", "50", "--concurrency", "50", "--timeout-s", "240"]
    if env.get("DELTAEDIT_WEIGHTS_DIR"):
        argv += ["--weights-dir", env["DELTAEDIT_WEIGHTS_DIR"]]
    code = cli.main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    tried, passed = map(int, re.search(r"total\s+(\d+)\s+(\d+)", out).groups())
    assert tried == passed >= 30
    assert "lost 0" in out and "errors 0" in out
    assert "temp folders after stop: none left" in out
