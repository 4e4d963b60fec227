"""An ASGI app that leaks memory on request, for corral's --max-memory tests.

GET /leak?mib=N&delay=S keeps N MiB (default 1) in a module-level list for the
worker's whole life, then waits S seconds (default 0) before answering. Every
path answers "WORKER_ID PID LEAKED_MIB".
"""

import asyncio
import os

MIB = 1 << 20
LEAKED: list[bytes] = []


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    if scope["path"] == "/leak":
        # Filled with a non-zero byte, so every page is written and counts in the RSS.
        LEAKED.append(b"\x01" * (int(query.get("mib", "1")) * MIB))
        await asyncio.sleep(float(query.get("delay", "0")))
    leaked = sum(len(block) for block in LEAKED) // MIB
    body = f"{os.environ.get('CORRAL_WORKER_ID')} {os.getpid()} {leaked}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})
