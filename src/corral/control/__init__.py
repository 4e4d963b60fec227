"""The control API: the manager's HTTP face and the CLI verbs that use it.

api.py       the Controller the manager implements, and the ASGI app around it
server.py    uvicorn on the Unix socket (and TCP when asked), in the manager's loop
address.py   where it listens: the per-directory socket path, HOST:PORT parsing
token.py     the bearer token for TCP
logbuffer.py the recent output lines, and their followers (`corral logs -f`)
client.py    the CLI's HTTP client, standard library only
commands.py  the verbs: status, reload, restart, scale, stop, jobs run, logs
table.py     `corral status` as text
"""
