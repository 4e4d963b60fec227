"""What the Python side of a request costs in each protocol class, without sockets or syscalls.

    python benchmarks/protocol_cost.py --rounds 20

The request rate and the CPU time of a real server include the kernel's
work (accept, read, write, epoll) and swing with the machine's load by more
than the few hundred nanoseconds a protocol's Python code adds. Here each
protocol class serves the same keep-alive GET of the hello app on an
in-memory transport, in one event loop (uvloop): the request is fed to the
protocol, the loop runs the app's task once, the response is "written". The
variants alternate in short batches, so that whatever else the machine does
weighs on each alike; the least CPU time per request of each (the batch the
rest of the machine disturbed least) is printed with its difference to
uvicorn's own protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.server import ServerState

from corral.child import http_protocols
from corral.child.proxy_headers import ProxyHeaders
from corral.child.request_log import RequestLog
from corral.child.request_stats import RequestStats
from corral.settings import WebConfig

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\n\r\n"
Made = tuple[type, Any, RequestLog | None, type]
"""A protocol class, the app around the app, its request log, and the cycle class its
module must create (uvicorn's own, or corral's, which a worker installs)."""
Variant = Callable[[Any], Made]


class Transport(asyncio.Transport):
    """Takes what the protocol writes, and forgets it."""

    def write(self, data: Any) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        addresses = {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}
        return addresses.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def variants(http: str) -> dict[str, Variant]:
    """name -> a maker of what `serve` takes."""
    config = WebConfig(app="hello:app", http=http)  # type: ignore[arg-type]
    module = importlib.import_module(MODULES[http])
    uvicorns = module.RequestResponseCycle

    def corral(recorded: bool) -> Variant:
        def make(app: Any) -> Made:
            log = RequestLog(RequestStats(), None) if recorded else None
            protocol = http_protocols.http_protocol(config, log)
            cycle = module.RequestResponseCycle
            module.RequestResponseCycle = uvicorns
            return protocol, ProxyHeaders(app, config.forwarded_allow_ips), log, cycle

        return make

    def plain(app: Any) -> Made:
        return uvicorn_protocol(http), ProxyHeadersMiddleware(app, "127.0.0.1"), None, uvicorns

    return {
        f"uvicorn's {http} protocol": plain,
        "corral, not recorded": corral(False),
        "corral, recorded (its default)": corral(True),
    }


async def never_called(scope: Any, receive: Any, send: Any) -> None:
    """An app for uvicorn.Config to load; only its protocol class is used."""


MODULES = {
    "httptools": "uvicorn.protocols.http.httptools_impl",
    "h11": "uvicorn.protocols.http.h11_impl",
    "zttp": "uvicorn.protocols.http.zttp_impl",
}


def uvicorn_protocol(http: str) -> type:
    config = uvicorn.Config(never_called, http=http, log_config=None)
    config.load()
    return config.http_protocol_class


async def serve(protocol_class: type, app: Any, log: RequestLog | None, requests: int) -> float:
    """CPU seconds per request over `requests` keep-alive requests on one connection."""
    config = uvicorn.Config(app, http=protocol_class, log_config=None, server_header=False)
    config.load()
    config.loaded_app = app
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(Transport())
    step = asyncio.sleep
    started = time.process_time()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        await step(0)  # the app's task runs, and answers at once
    if log is not None:
        log.flush()  # the counting of this batch is part of its cost
    elapsed = time.process_time() - started
    protocol.connection_lost(None)
    return elapsed / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--http", default="httptools", choices=("httptools", "h11", "zttp"))
    parser.add_argument("--requests", type=int, default=20_000, help="per batch")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent / "apps"))
    import hello

    module = importlib.import_module(MODULES[args.http])
    made = {name: make(hello.app) for name, make in variants(args.http).items()}
    costs: dict[str, list[float]] = {name: [] for name in made}
    uvicorns = module.RequestResponseCycle
    for _ in range(args.rounds):
        for name, (protocol_class, app, log, cycle) in made.items():
            module.RequestResponseCycle = cycle  # what the worker of this variant creates
            costs[name].append(uvloop.run(serve(protocol_class, app, log, args.requests)))
            module.RequestResponseCycle = uvicorns
    reference = min(next(iter(costs.values()))) * 1e6
    for name, values in costs.items():
        cost = min(values) * 1e6
        print(f"{name:<32} {cost:6.2f} us  {cost - reference:+.2f} us  ({cost / reference:.3f}x)")


if __name__ == "__main__":
    main()
