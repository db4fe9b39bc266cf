"""`python -m deltaedit reliability`: hostile input and a concurrent load run against the app.

Without --url it launches `app.py` on a free localhost port (toy domain; weights from
--weights-dir / $DELTAEDIT_WEIGHTS_DIR / assets/toy), with an empty working folder and a private
temp folder, so that stray files can be detected; the server's memory is read from /proc.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

NAME = "reliability"
HELP = "send hostile input and N concurrent requests to the app (localhost) and report what happened"


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running app on this machine, e.g. http://127.0.0.1:7860/")
    where.add_argument("--launch", action="store_true", help="start app.py on a free port (the default)")
    p.add_argument(
        "--pid", type=int, default=None, help="with --url: the server's process id, to read its memory"
    )
    p.add_argument(
        "--weights-dir", default=None, help="toy weights for the launched app (default: assets/toy)"
    )
    p.add_argument("--requests", type=int, default=50, help="requests in the load run (default 50)")
    p.add_argument("--concurrency", type=int, default=50, help="requests in flight at once (default 50)")
    p.add_argument("--timeout-s", type=float, default=120.0, help="time limit of the load run (default 120)")
    p.add_argument("--skip-hostile", action="store_true", help="only the load run")
    p.add_argument("--skip-load", action="store_true", help="no load run")
    p.add_argument("--skip-abuse", action="store_true", help="no abuse run (issue 25's rows from one visitor)")
    p.add_argument(
        "--upload-dir",
        help="with --url: the app's upload folder (GRADIO_TEMP_DIR), to watch its disk use during the abuse run",
    )


def run(args: argparse.Namespace) -> int:
    from .. import reliability

    # gradio_client logs every HTTP request at INFO: hundreds of lines for one load run.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = None
    try:
        if args.url:
            url, pid = reliability.check_local_url(args.url), args.pid
        else:
            print("launching app.py ...", flush=True)
            app = reliability.launch_app(args.weights_dir)
            url, pid = app.url, app.pid
            print(f"app answered at {url} after {app.startup_s:.1f} s (pid {pid})", flush=True)
        cases = [] if args.skip_hostile else reliability.run_hostile(url, app, timeout_s=args.timeout_s)
        abuse = None
        if not args.skip_abuse:
            upload_dir = app.tmp / "gradio" if app is not None else (Path(args.upload_dir) if args.upload_dir else None)
            abuse = reliability.run_abuse(url, pid, upload_dir)
        load = None
        if not args.skip_load:
            load = reliability.run_load(url, args.requests, args.concurrency, args.timeout_s, pid=pid)
        if app is not None:
            app.stop()  # records whether the download folder was removed at exit
    finally:
        if app is not None:
            app.cleanup()
    print(reliability.format_report(cases, load, app, abuse))
    ok = all(c.passed for c in cases) and (load is None or load.passed) and (abuse is None or abuse.passed)
    ok = ok and (app is None or not app.leftovers_after_stop)
    return 0 if ok else 1
