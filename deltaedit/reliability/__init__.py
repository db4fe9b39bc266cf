"""Reliability checks of the running app (`app.py`) through its public gradio_client API.

Two checks, both against a server on this machine only:

* hostile input (`hostile_cases`, `run_case`): broken, odd or oversized photos, prompts and
  numbers; and server paths named instead of uploads (`run_server_paths`, raw JSON to every
  public endpoint), which must be refused at once with nothing copied. Each case expects a clear error or a sensible result; after each the server must still
  answer and, when we launched it ourselves (`launch_app`), nothing may be written outside its
  temp folders and a refused request may leave no download file behind.
* load (`run_load`): N concurrent edits; every request must be answered or told that the queue is
  full (the app bounds its queue), none lost. It reports p50/p95 latency and the server's memory
  (RSS from /proc/PID/status) before and after.

`python -m deltaedit reliability` runs both and prints a table. gradio_client (not gradio) is
imported on first use, so the library stays gradio-free.
"""

from .abuse import (
    ABUSE_ROWS,
    D_CALL,
    GAN_CALL,
    AbuseReport,
    RawAnswer,
    abuse_case,
    raw_call,
    raw_request,
    run_abuse,
)
from .hostile import (
    SERVER_PATH_ENDPOINTS,
    Case,
    CaseResult,
    hostile_cases,
    run_case,
    run_hostile,
    run_server_path_case,
    run_server_paths,
    server_path_targets,
    write_hostile_files,
)
from .load import LoadReport, run_load, visitor_address
from .report import format_report
from .server import (
    EDIT,
    MAX_GROWTH_MB,
    LaunchedApp,
    check_local_url,
    free_port,
    is_serving,
    launch_app,
    make_client,
)

__all__ = [
    "ABUSE_ROWS", "D_CALL", "EDIT", "GAN_CALL", "MAX_GROWTH_MB", "SERVER_PATH_ENDPOINTS", "AbuseReport", "Case",
    "CaseResult", "LaunchedApp", "LoadReport", "RawAnswer", "abuse_case", "check_local_url", "format_report",
    "free_port", "hostile_cases", "is_serving", "launch_app", "make_client", "raw_call", "raw_request", "run_abuse",
    "run_case", "run_hostile", "run_load", "run_server_path_case", "run_server_paths", "server_path_targets",
    "visitor_address", "write_hostile_files",
]  # fmt: skip
