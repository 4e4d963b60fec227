"""The zygote: imports the app once, then forks web workers when the manager asks.

Run as `python -m corral.web.zygote CHANNEL_FD` by the manager. Its life:
read the spec from the manager -> load the app (with preload) and freeze the
heap, so that workers share it copy-on-write -> say "loaded" (or "failed",
exit 3) -> serve fork requests and report each worker's exit, until the
manager says "exit" or goes away (then it drains its workers and exits).

The loop is a plain blocking `select`: no event loop, no threads, so that
forking from here is safe.
"""

from __future__ import annotations

import contextlib
import gc
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

from corral import channel, system
from corral.config import WebConfig
from corral.exit_codes import APP_FAILED, FAILURE, OK
from corral.web.app_loader import AppLoadError, load_app
from corral.web.worker import WorkerSpec, run_worker

REAP_POLL = 0.05


class Zygote:
    def __init__(self, link: socket.socket, spec: dict[str, Any], decoder: channel.Decoder) -> None:
        self.link = link
        self.config = WebConfig.model_validate(spec["config"])
        self.listen_fds: list[int] = spec["listen_fds"]
        self.access_fd: int = spec["access_fd"]
        self.app: Any | None = None
        self.workers: set[int] = set()
        self.decoder = decoder
        self.exiting = False
        self.wake_read, self.wake_write = os.pipe()

    def load(self) -> None:
        """Import the app before any fork (preload), then keep its objects out of the GC's way.

        gc.freeze() moves everything allocated so far to a permanent
        generation: collections in the workers then never touch (and so never
        copy) the pages those objects live on.
        """
        if self.config.preload:
            self.app = load_app(self.config.app, self.config.factory)
        gc.freeze()

    def serve(self) -> int:
        for fd in (self.wake_read, self.wake_write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_term)
        selector = selectors.DefaultSelector()
        selector.register(self.link, selectors.EVENT_READ)
        selector.register(self.wake_read, selectors.EVENT_READ)
        while not self.exiting:
            for key, _ in selector.select():
                if key.fileobj is self.link:
                    self._read_requests()
                else:
                    self._drain_wakeups()
            self._reap()
        selector.close()
        return OK

    def _on_term(self, sig: int, frame: object) -> None:
        self._stop_workers()

    def _read_requests(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.link, 65536, channel.MAX_FDS_PER_READ)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            # The manager has gone: no process of ours may outlive it.
            self._stop_workers()
            return
        for message, message_fds in self.decoder.feed(data, fds):
            if message["t"] == "fork":
                self._fork(message["key"], message["name"], *message_fds)
            elif message["t"] == "exit":
                self.exiting = True

    def _fork(self, key: int, name: str, channel_fd: int, log_fd: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os._exit(self._become_worker(name, channel_fd, log_fd))
        os.close(channel_fd)
        os.close(log_fd)
        self.workers.add(pid)
        channel.send(self.link, {"t": "forked", "key": key, "pid": pid})

    def _become_worker(self, name: str, channel_fd: int, log_fd: int) -> int:
        """In the child: shed the zygote's descriptors and handlers, then run the worker."""
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            for fd in (self.wake_read, self.wake_write, self.link.fileno()):
                os.close(fd)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(log_fd)
            spec = WorkerSpec(
                name=name,
                config=self.config,
                app=self.app,
                listen_fds=self.listen_fds,
                channel_fd=channel_fd,
                access_fd=self.access_fd,
                zygote_pid=os.getppid(),
            )
            return run_worker(spec)
        except BaseException:
            import traceback

            traceback.print_exc()
            return FAILURE
        finally:
            sys.stdout.flush()
            sys.stderr.flush()

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_read, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if pid == 0:
                return
            self.workers.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            if not self.exiting:
                with contextlib.suppress(OSError):
                    channel.send(self.link, {"t": "exited", "pid": pid, "code": code})

    def _stop_workers(self) -> None:
        """Drain every worker (SIGTERM), kill those still there after the graceful timeout."""
        self.exiting = True
        for pid in self.workers:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.graceful_timeout + 1
        while self.workers and time.monotonic() < deadline:
            self._reap()
            time.sleep(REAP_POLL)
        for pid in self.workers:
            os.kill(pid, signal.SIGKILL)
        self._reap()


def main() -> int:
    link = socket.socket(fileno=int(sys.argv[1]))
    decoder = channel.Decoder()
    spec: dict[str, Any] | None = None
    while spec is None:
        data = link.recv(1 << 20)
        if not data:
            return OK
        messages = decoder.feed(data)
        if messages:
            spec = messages[0][0]
    if not system.die_with_parent(spec["manager_pid"]):
        return OK
    system.set_title(f"corral: {spec['name']}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    zygote = Zygote(link, spec, decoder)
    if zygote.config.env_file is not None:
        from dotenv import load_dotenv

        load_dotenv(zygote.config.env_file, override=False)
    try:
        zygote.load()
    except AppLoadError as error:
        print(error, file=sys.stderr, flush=True)
        channel.send(link, {"t": "failed"})
        return APP_FAILED
    channel.send(link, {"t": "loaded"})
    return zygote.serve()


if __name__ == "__main__":
    sys.exit(main())
