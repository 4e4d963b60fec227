"""The beat and the consumers of the queue example: a Redis list as a reliable work queue.

`push_tick` ([jobs.beat], every second) LPUSHes the current timestamp to `queue`.
`consume` ([processes.consumer], 2 replicas) takes items from the other end with BLMOVE,
which moves each one, atomically, to the replica's own `processing:N` list: an item is
always in a list, never only in a process's memory. Once the work is done, the item is
recorded in `taken` and removed from `processing:N` in one transaction. A replica that
starts (or restarts, after a SIGKILL mid-item) first puts back on the queue whatever its
previous life left in `processing:N`: nothing is lost, and nothing is taken twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import redis.asyncio as redis

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "queue"  # pushed on the left, taken from the right: oldest first
TAKEN = "taken"  # {"item": ..., "replica": ...}, newest first
PUSHED = "pushed"  # every item pushed, newest first (an audit trail)
HISTORY = 1000  # TAKEN and PUSHED keep this many entries
BLOCK_SECONDS = 5  # how long one BLMOVE waits for an item before asking again
WORK_SECONDS = float(os.environ.get("WORK_SECONDS", "0.1"))  # the simulated work per item


def connect() -> redis.Redis:
    return redis.from_url(REDIS_URL, decode_responses=True)


def processing_list(replica: str) -> str:
    return f"{QUEUE}:processing:{replica}"


async def push_tick() -> None:
    """One run of the beat: push the current timestamp."""
    item = f"{time.time():.6f}"
    async with connect() as client, client.pipeline(transaction=True) as pipe:
        pipe.lpush(QUEUE, item)
        pipe.lpush(PUSHED, item)
        pipe.ltrim(PUSHED, 0, HISTORY - 1)
        await pipe.execute()
    print(f"pushed {item}")


async def consume() -> None:
    """Take items until cancelled (corral's stop_signal cancels an async process)."""
    replica = os.environ.get("CORRAL_REPLICA", "1")
    processing = processing_list(replica)
    async with connect() as client:
        requeued = 0
        while await client.lmove(processing, QUEUE, "RIGHT", "RIGHT") is not None:
            requeued += 1
        if requeued:
            print(f"re-queued {requeued} item(s) left in {processing} by a previous run")
        print(f"consumer {replica} waiting on {QUEUE!r}")
        while True:
            # Blocked consumers are served in turn; the timeout only bounds a silent connection.
            item = await client.blmove(QUEUE, processing, BLOCK_SECONDS, "RIGHT", "LEFT")
            if item is None:
                continue
            try:
                await asyncio.sleep(WORK_SECONDS)  # the work
            except asyncio.CancelledError:
                # Stopping mid-item: give the item back now rather than at the next start.
                await client.lmove(processing, QUEUE, "LEFT", "RIGHT")
                raise
            async with client.pipeline(transaction=True) as pipe:
                pipe.lpush(TAKEN, json.dumps({"item": item, "replica": f"consumer.{replica}"}))
                pipe.ltrim(TAKEN, 0, HISTORY - 1)
                pipe.lrem(processing, 1, item)
                await pipe.execute()
            print(f"took {item}")
