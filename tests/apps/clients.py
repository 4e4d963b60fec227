"""An ASGI app for the tests of what one client may take of a worker.

GET /             answers "CLIENT SCHEME" (the client as the app sees it, "-" if none)
POST /body        reads the whole body, answers its length
GET /big?mib=N    answers N MiB (default 16) in one message
websocket /ws     accepted; then sends ?mib=N MiB (default 0) in 64 KiB messages, then echoes
"""

import os


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
    if scope["type"] == "websocket":
        await websocket(receive, send, int(query.get("mib", "0")))
        return
    if scope["path"] == "/body":
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = str(size).encode()
    elif scope["path"] == "/big":
        body = os.urandom(1024) * (int(query.get("mib", "16")) * 1024)
    else:
        client = scope["client"][0] if scope.get("client") else "-"
        body = f"{client} {scope['scheme']}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def websocket(receive, send, mib):
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    block = os.urandom(64 * 1024)
    for _ in range(mib * 16):
        await send({"type": "websocket.send", "bytes": block})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})
