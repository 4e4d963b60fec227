"""The jobs zygote: imports every `call` job once, then forks one child per run.

Forked by the launcher (`corral.child.launcher`), which calls `main(CHANNEL_FD)`. A run costs
a fork, not an interpreter start and an import, so a job every second is
cheap. A job whose target cannot be imported is reported at load; its runs
then fail with that error, and the other jobs run on.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
from typing import Any

from corral import posix
from corral.child.app_loader import AppLoadError, load_app
from corral.child.fork_server import ForkServer, redirect_output, start
from corral.child.runner import run_callable
from corral.exit_codes import FAILURE, OK
from corral.ipc import channel
from corral.ipc.messages import ForkRun, JobsZygoteSpec, Loaded


class JobsZygote(ForkServer):
    def __init__(self, link: socket.socket, decoder: channel.Decoder, spec: JobsZygoteSpec) -> None:
        super().__init__(link, decoder, stop_timeout=spec.stop_timeout)
        self.targets = spec.targets  # job name -> module:function
        self.loaded: dict[str, Any] = {}
        self.broken: dict[str, str] = {}

    def load(self) -> None:
        for job, target in self.targets.items():
            try:
                self.loaded[job] = load_app(target, factory=False)
            except AppLoadError as error:
                self.broken[job] = str(error)
                print(f"job {job!r}: cannot import {target!r}:\n{error}", file=sys.stderr)
        gc.freeze()

    def become(self, message: ForkRun, fds: list[int]) -> int:  # type: ignore[override]
        (log_fd,) = fds
        redirect_output(log_fd)
        job = message.job
        posix.set_title(f"corral: {message.name}")
        os.environ.update(message.env)
        if message.cwd:
            os.chdir(message.cwd)
        if job in self.broken:
            print(self.broken[job], file=sys.stderr)
            return FAILURE
        return run_callable(self.loaded[job])


def main(link_fd: int) -> int:
    started = start(link_fd)
    if started is None:
        return OK
    link, decoder, spec, _ = started
    zygote = JobsZygote(link, decoder, spec)
    zygote.load()
    channel.send(link, Loaded(broken=sorted(zygote.broken)))
    return zygote.serve()
