#!/usr/bin/python3
"""py_client.py: python3-websockets (10.x) client scenarios for
spec/external_clients_spec.lua. Run with Debian's /usr/bin/python3.

Every mode prints ONE JSON line on stdout and exits 0 when it could run
(assertions are made by the spec on the JSON); it exits 2 on a usage error.

Modes:
  echo URL              text, binary, NUL bytes, 500 KB messages; each must
                        come back identical (content and type)
  fragmented URL        messages sent as fragments (an iterable passed to
                        send), text and binary; each must come back whole
  wait-close URL        sends "close-me", then reports the close code and
                        reason the server sends
  broadcast URL N       opens N connections, sends "hello I" on each, then
                        reports the first message each one receives
  slow URL FLAGFILE     sends "slow-ready", then stops reading until FLAGFILE
                        exists; then reads everything and reports how the
                        connection ended
"""

import asyncio
import json
import os
import sys
import time

import websockets

TIMEOUT = 15


def out(obj):
    print(json.dumps(obj, sort_keys=True))
    sys.stdout.flush()


def describe(msg):
    return {"type": "str" if isinstance(msg, str) else "bytes", "len": len(msg)}


def connect(url, **kw):
    kw.setdefault("ping_interval", None)
    kw.setdefault("max_size", 2 ** 22)
    kw.setdefault("open_timeout", TIMEOUT)
    kw.setdefault("close_timeout", 5)
    return websockets.connect(url, **kw)


def close_info(e):
    rcvd = getattr(e, "rcvd", None)
    if rcvd is not None:
        return {"code": rcvd.code, "reason": rcvd.reason}
    return {"code": None, "reason": None}


async def mode_echo(url):
    cases = [
        ("text", "hello from python"),
        ("text-utf8", "héllo wörld € 𝄞"),
        ("text-empty", ""),
        ("binary", bytes(range(256))),
        ("binary-empty", b""),
        ("text-nul", "a\x00b\x00\x00c"),
        ("binary-nul", b"\x00" * 100 + b"x" + b"\x00"),
        ("text-500k", "t" * (500 * 1024 - 3) + "€"),  # 500 KiB of UTF-8
        ("binary-500k", bytes(i % 251 for i in range(500 * 1024))),
    ]
    results = []
    async with connect(url) as ws:
        for name, payload in cases:
            await ws.send(payload)
            try:
                got = await asyncio.wait_for(ws.recv(), TIMEOUT)
            except asyncio.TimeoutError:
                results.append({"name": name, "ok": False, "error": "timeout"})
                continue
            r = {"name": name, "ok": got == payload and type(got) is type(payload)}
            r.update(describe(got))
            r["sent_len"] = len(payload)
            results.append(r)
        await ws.close(1000, "echo done")
        code = ws.close_code
    out({"mode": "echo", "cases": results, "close_code": code})


async def mode_fragmented(url):
    cases = [
        ("text-fragments", ["frag-one ", "frag-two ", "ünïcödé ", "frag-€nd"]),
        ("binary-fragments", [b"\x00\x01\x02", b"", b"\xff" * 70000, b"end"]),
    ]
    results = []
    async with connect(url) as ws:
        for name, parts in cases:
            await ws.send(parts)  # an iterable: one message, one frame per item
            whole = parts[0][:0].join(parts)
            try:
                got = await asyncio.wait_for(ws.recv(), TIMEOUT)
            except asyncio.TimeoutError:
                results.append({"name": name, "ok": False, "error": "timeout"})
                continue
            r = {"name": name, "ok": got == whole and type(got) is type(whole), "fragments": len(parts)}
            r.update(describe(got))
            if isinstance(got, str):
                r["text"] = got
            results.append(r)
        await ws.close(1000, "fragments done")
    out({"mode": "fragmented", "cases": results})


async def mode_wait_close(url):
    res = {"mode": "wait-close", "messages": []}
    async with connect(url) as ws:
        await ws.send("close-me")
        try:
            while True:
                msg = await asyncio.wait_for(ws.recv(), TIMEOUT)
                res["messages"].append(msg if isinstance(msg, str) else msg.hex())
        except websockets.ConnectionClosed as e:
            res.update(close_info(e))
        except asyncio.TimeoutError:
            res["error"] = "timeout"
    out(res)


async def mode_broadcast(url, n):
    conns = [await connect(url) for _ in range(n)]
    for i, ws in enumerate(conns):
        await ws.send("hello %d" % (i + 1))
    received = []
    for ws in conns:
        try:
            received.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
        except (asyncio.TimeoutError, websockets.ConnectionClosed) as e:
            received.append("ERROR: %s" % type(e).__name__)
    for ws in conns:
        await ws.close(1000, "bye")
    out({"mode": "broadcast", "received": received})


async def mode_slow(url, flag):
    res = {"mode": "slow", "messages": 0, "bytes": 0, "flag_seen": False}
    # max_queue=1: websockets buffers at most one message, then stops
    # reading from the socket; read_limit keeps its own buffer small.
    async with connect(url, max_queue=1, read_limit=2 ** 14) as ws:
        await ws.send("slow-ready")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(flag):
                res["flag_seen"] = True
                break
            await asyncio.sleep(0.02)
        try:
            while True:
                msg = await asyncio.wait_for(ws.recv(), TIMEOUT)
                res["messages"] += 1
                res["bytes"] += len(msg)
        except websockets.ConnectionClosed as e:
            res.update(close_info(e))
        except asyncio.TimeoutError:
            res["error"] = "timeout"
    out(res)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    mode, url = argv[0], argv[1]
    if mode == "echo":
        coro = mode_echo(url)
    elif mode == "fragmented":
        coro = mode_fragmented(url)
    elif mode == "wait-close":
        coro = mode_wait_close(url)
    elif mode == "broadcast":
        coro = mode_broadcast(url, int(argv[2]))
    elif mode == "slow":
        coro = mode_slow(url, argv[2])
    else:
        print("unknown mode " + mode, file=sys.stderr)
        return 2
    try:
        asyncio.run(coro)
    except Exception as e:  # report instead of a traceback-only failure
        out({"mode": mode, "error": "%s: %s" % (type(e).__name__, e)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
