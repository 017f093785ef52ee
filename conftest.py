"""Test configuration shared by every test and notebook: the suite is hermetic.

Under pytest, load_pretrained_gpt2 always returns the stand-in (shared.gpt2_weights.STANDIN_ENV),
whatever the network, so the committed notebook outputs are reproduced online and offline. The
notebook kernels that nbval starts inherit this environment. A learner running a notebook by
hand does not have it set and gets real GPT-2.
"""

import ctypes
import json
import os
import platform
import time

from shared.gpt2_weights import STANDIN_ENV

os.environ[STANDIN_ENV] = "1"

# Large tensors without page faults (Linux/glibc; other C libraries ignore the variable). glibc
# gives every allocation of 32 MB or more its own fresh mmap and unmaps it on free, so each
# training step faults in its logits (batch x 512 x 50257 floats = 100 MB per sequence), their
# gradients and AdamW's temporaries page by page, again and again. Kept on the heap instead,
# memory is reused: a 13M-parameter training step took 0.40 s -> 0.29 s, a GPT-2 124M step
# 5.0 s -> 3.6 s (AMD EPYC, 2 cores, load under 0.7); the committed outputs reproduce with it.
# The notebook kernels and scripts that the tests start inherit the variable; pytest has mallopt.
TRIM_THRESHOLD = 1 << 30  # bytes of free heap kept before any is handed back
MALLOC_TUNABLES = f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"
os.environ["GLIBC_TUNABLES"] = ":".join(
    filter(None, [os.environ.get("GLIBC_TUNABLES"), MALLOC_TUNABLES])
)
if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallopt(-4, 0)  # M_MMAP_MAX
    _libc.mallopt(-1, TRIM_THRESHOLD)  # M_TRIM_THRESHOLD


# The durations report: every test's time (setup, call and teardown together) is written to
# test-durations.json when the run ends, and tests/time_budget.py adds the times up per notebook
# against the course guide's budgets. .ci/run sets LLM_COURSE_RUN_STARTED (epoch seconds) to have
# the report printed here, with the whole run's time, before pytest's closing line. A report,
# not a test: nothing fails on time.
DURATIONS_FILE = os.environ.get("LLM_COURSE_DURATIONS", "test-durations.json")
_durations: dict[str, float] = {}


def pytest_runtest_logreport(report):
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _durations:
        return
    with open(DURATIONS_FILE, "w", encoding="utf-8") as file:
        json.dump(_durations, file, indent=0)
    started = os.environ.get("LLM_COURSE_RUN_STARTED")
    if started:
        from tests.time_budget import report

        terminalreporter.section("where the time went (tests/time_budget.py)")
        terminalreporter.write_line(report(_durations, total_s=time.time() - float(started)))
