"""The process group and the job of the chaos system (benchmarks/chaos.py).

- `consume`: a replica that works until it is asked to stop (the runner turns SIGTERM into
  SystemExit).
- `tick`: a job every second. Each run first appends its tick (`CORRAL_JOB_TICK`, the Unix
  time it was scheduled for) and its pid to the file named by CHAOS_TICKS, then works for a
  while, so that the harness finds runs alive to kill and to stop.
"""

import os
import time

RUN_SECONDS = 0.4


def consume() -> None:
    while True:
        time.sleep(0.1)


def tick() -> None:
    line = f"{os.environ['CORRAL_JOB_TICK']} {time.time():.3f} {os.getpid()}\n"
    with open(os.environ["CHAOS_TICKS"], "a") as ticks:
        ticks.write(line)
    time.sleep(RUN_SECONDS)
