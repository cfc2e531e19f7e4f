"""Runs many command lines of `trtllm-dwdp` in one interpreter and reports each as JSON (for test_front_door).

stdin: a JSON list of cases {"argv": [...], "env": {...}}; stdout: one JSON line per case with the exit code,
the output, the seconds it took, and whether it was stopped by the per-case alarm. Each case runs under
SIGALRM (a Python-level loop is interrupted) and an address-space limit (an allocation without bound fails
at once instead of swapping), so a hang or a runaway allocation is reported, not waited for.
"""

import contextlib
import io
import json
import os
import resource
import signal
import sys
import time
import traceback

ALARM_S = 10
ADDRESS_SPACE = 16 << 30


class Alarm(BaseException):
    pass


def _alarm(_signum, _frame):
    raise Alarm()


def run_case(case: dict) -> dict:
    from tensorrt_llm_dwdp.commands.main import main

    saved = dict(os.environ)
    os.environ.update(case.get("env", {}))
    out = io.StringIO()
    start = time.time()
    rc, hung = None, False
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(ALARM_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = main(list(case["argv"]))
    except Alarm:
        hung = True
    except SystemExit as e:  # argparse's --help, say
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported to the test as what the user would see
        out.write(traceback.format_exc())
        rc = 1
    finally:
        signal.alarm(0)
        os.environ.clear()
        os.environ.update(saved)
    return {"argv": case["argv"], "env": case.get("env", {}), "rc": rc, "out": out.getvalue(),
            "seconds": time.time() - start, "hung": hung}


def main() -> int:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    cases = json.load(sys.stdin)
    for case in cases:
        print(json.dumps(run_case(case)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
