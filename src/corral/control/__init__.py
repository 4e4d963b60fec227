"""The control API: the manager's HTTP face and the CLI verbs that use it.

api.py       the Controller the manager implements, and the ASGI app around it
server.py    uvicorn on the Unix socket (and TCP when asked), in the manager's loop
address.py   where it listens: each manager's socket path, HOST:PORT parsing
discovery.py which corrals run in a directory (the verbs' default target); leftovers removed
token.py     the bearer token for TCP
client.py    the CLI's HTTP client, standard library only
commands.py  the verbs: status, reload, restart, scale, stop, jobs run, logs
table.py     `corral status` as text
"""
