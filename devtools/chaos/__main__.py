"""python -m devtools.chaos [--short] [--conversions N] [--seconds S] [--report PATH] [--seed N]"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from devtools.chaos import __doc__ as about
from devtools.chaos.run import RunOptions, run_chaos, say

# The full run of the issue, and the short one `make test` runs (same targets, fewer kills required).
FULL = {"conversions": 100_000, "seconds": 600.0, "outage": 60.0, "campaigns": 400, "min_kills": 10}
SHORT = {"conversions": 2_000, "seconds": 50.0, "outage": 20.0, "campaigns": 40, "min_kills": 6}


def main() -> None:
    parser = argparse.ArgumentParser(description=about, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the ~2-minute run make test includes")
    parser.add_argument("--conversions", type=int, help=f"conversions (default {FULL['conversions']})")
    parser.add_argument(
        "--seconds", type=float, help=f"seconds over which they are sent (default {FULL['seconds']:.0f})"
    )
    parser.add_argument(
        "--outage", type=float, help=f"seconds every destination is down (default {FULL['outage']:.0f})"
    )
    parser.add_argument("--report", default="chaos-report.json", help="where the JSON report goes")
    parser.add_argument("--seed", type=int, default=int(time.time()), help="random seed (default: the time)")
    args = parser.parse_args()
    preset = SHORT if args.short else FULL
    options = RunOptions(
        conversions=args.conversions or int(preset["conversions"]),
        seconds=args.seconds or float(preset["seconds"]),
        outage_s=args.outage or float(preset["outage"]),
        campaigns=int(preset["campaigns"]),
        hostile_share=0.05,
        change_share=0.2,
        min_kills=int(preset["min_kills"]),
        seed=args.seed,
        report_path=args.report,
    )
    say(f"chaos: seed {args.seed}")
    # SIGTERM (a CI timeout, `kill`) ends the run like Ctrl-C: processes stopped, embedded broker stopped
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise SystemExit(0 if asyncio.run(run_chaos(options)) else 1)


if __name__ == "__main__":
    main()
