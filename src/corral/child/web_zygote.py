"""The web zygote: imports the app once, then forks web workers when the manager asks.

Forked by the launcher (`corral.child.launcher`), which calls `main(CHANNEL_FD)`;
see `corral.child.fork_server` for its life. With preload it imports the app and
freezes the heap before any fork, so that workers share it copy-on-write;
without, each worker imports the app itself.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
from typing import Any

from corral.child.app_loader import AppLoadError, load_app
from corral.child.fork_server import ForkServer, redirect_output, start
from corral.child.worker import WorkerSpec, run_worker
from corral.exit_codes import APP_FAILED, OK
from corral.ipc import channel
from corral.ipc.messages import ForkWorker, Loaded, LoadFailed, WebZygoteSpec
from corral.settings import WebConfig


class WebZygote(ForkServer):
    def __init__(
        self,
        link: socket.socket,
        decoder: channel.Decoder,
        spec: WebZygoteSpec,
        fds: list[int],
    ) -> None:
        self.config = WebConfig.model_validate(spec.config)
        super().__init__(link, decoder, stop_timeout=spec.stop_timeout)
        self.access_fd, *self.listen_fds = fds  # the spec's descriptors, in this order
        self.log_format = spec.log_format
        self.color = spec.color
        self.app: Any | None = None

    def load(self) -> None:
        """Import the app before any fork (preload), then keep its objects out of the GC's way.

        gc.freeze() moves everything allocated so far to a permanent
        generation: collections in the workers then never touch (and so never
        copy) the pages those objects live on.
        """
        if self.config.env_file is not None:
            from dotenv import load_dotenv

            load_dotenv(self.config.env_file, override=False)
        if self.config.preload:
            self.app = load_app(self.config.app, self.config.factory)
        gc.freeze()

    def become(self, message: ForkWorker, fds: list[int]) -> int:  # type: ignore[override]
        channel_fd, log_fd = fds
        redirect_output(log_fd)
        spec = WorkerSpec(
            name=message.name,
            config=self.config,
            app=self.app,
            listen_fds=self.listen_fds,
            channel_fd=channel_fd,
            access_fd=self.access_fd,
            zygote_pid=os.getppid(),
            log_format=self.log_format,
            color=self.color,
        )
        return run_worker(spec)


def main(link_fd: int) -> int:
    started = start(link_fd)
    if started is None:
        return OK
    link, decoder, spec, fds = started
    zygote = WebZygote(link, decoder, spec, fds)
    try:
        zygote.load()
    except AppLoadError as error:
        print(error, file=sys.stderr, flush=True)
        channel.send(link, LoadFailed())
        return APP_FAILED
    channel.send(link, Loaded())
    return zygote.serve()
