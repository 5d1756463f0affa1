#!/usr/bin/python3
"""A hostile mesh peer for spec/attack_mesh_routes_spec.lua.

Speaks the /ws/p2p protocol of docs/PROTOCOL.md over real sockets, against
127.0.0.1 only, with every loop bounded in count and time. Prints one JSON
object with what it saw (close codes, bytes) on stdout.

  attack_mesh_routes.py huge URL LINKS ROUTES NAMELEN HOLD ROUNDS
      LINKS links, each says hello as atk<i>-<n> and sends ROUNDS adverts
      of ROUTES routes (destinations of its own, paths of 3 names padded to
      NAMELEN characters), the seq of every route bumped each round, then
      holds the links HOLD seconds and closes them.
  flip URL FEED FLIPS
      one "feeder" link advertises FEED routes; two "observer" links (they
      announce the "delta" feature) count the registry_sync bytes the node
      sends them; then an attacker link sends FLIPS small adverts that add
      and remove one route in turn.
  many URL N
      opens N links from ten loopback addresses, one after the other, each
      saying hello; reports how many the node closed and with which code.
  pending URL SLOTS LEGIT_ADDR
      opens SLOTS links from 127.0.0.1 that never say hello, then a link
      from LEGIT_ADDR that does; reports the close codes and whether the
      legitimate link got its advert.
"""

import asyncio
import json
import sys
import time

import websockets


def env(type_, frm, data, **kw):
    m = {"type": type_, "id": "%s-%d" % (frm, int(time.monotonic() * 1e6)), "from": frm, "data": data}
    m.update(kw)
    return json.dumps(m, separators=(",", ":"))


async def hello(ws, me, features=None):
    data = {"version": 1, "node": me}
    if features:
        data["features"] = features
    await ws.send(env("hello", me, data))


async def wait_type(ws, type_, timeout):
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        msg = await asyncio.wait_for(ws.recv(), left)
        v = json.loads(msg)
        if v.get("type") == type_:
            return v


async def closed_code(ws, timeout):
    """Waits (reading) until the node closes ws: its close code, or None."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.wait_for(ws.recv(), deadline - time.monotonic())
    except websockets.ConnectionClosed:
        return ws.close_code
    except asyncio.TimeoutError:
        return None
    return None


async def huge(url, links, routes, namelen, hold, rounds):
    out = {"codes": [], "sent_bytes": 0, "adverts": 0}
    socks = []

    async def one(i):
        me = "atk%d-%d" % (i, int(time.time()))
        # Spread over ten loopback source addresses: one address may only
        # have max_pending_per_address links waiting for hello at once.
        ws = await websockets.connect(url, max_size=None, open_timeout=10, ping_interval=None,
                                      local_addr=("127.0.0.%d" % (2 + i % 10), 0))
        socks.append(ws)
        await hello(ws, me)
        await wait_type(ws, "registry_sync", 10)
        pad = "x" * max(0, namelen - 12)

        def servers(k):
            # With 64-character names, a second server name brings the
            # advert to the issue's ~924 KiB.
            if namelen >= 64:
                return ["srv%d" % k, ("s%05d-%s" % (k, pad))[:36]]
            return ["srv%d" % k]
        for rnd in range(rounds):
            rs = [{"path": [me], "seq": rnd + 1, "servers": []}]
            for k in range(routes - 1):
                rs.append({"path": [me, "%s-h%05d%s" % (me[:3], k, pad)[:64],
                                    ("d%02d-%05d-%s" % (i, k, pad))[:64]],
                           "seq": rnd + 1, "servers": servers(k)})
            text = json.dumps({"type": "registry_sync", "id": "%s-a%d" % (me, rnd), "from": me,
                               "data": {"seq": rnd + 1, "routes": rs}}, separators=(",", ":"))
            try:
                await ws.send(text)
            except websockets.ConnectionClosed:
                break
            out["sent_bytes"] += len(text)
            out["adverts"] += 1
            await asyncio.sleep(0.2)
        code = await closed_code(ws, hold)
        out["codes"].append(code)

    await asyncio.gather(*(one(i) for i in range(links)))
    for ws in socks:
        await ws.close()
    out["text_bytes"] = out["sent_bytes"] // max(1, out["adverts"])
    return out


async def flip(url, feed, flips):
    t0 = int(time.time())
    out = {"in_bytes": 0, "observer_bytes": [0, 0], "observer_msgs": [0, 0], "codes": []}
    feeder = await websockets.connect(url, max_size=None, ping_interval=None)
    await hello(feeder, "feed-%d" % t0)
    await wait_type(feeder, "registry_sync", 10)
    me = "feed-%d" % t0
    rs = [{"path": [me], "seq": 1, "servers": []}]
    for k in range(feed - 1):
        rs.append({"path": [me, "fd-%05d" % k], "seq": 1, "servers": ["counter", "svc%d" % k]})
    await feeder.send(env("registry_sync", me, {"seq": 1, "routes": rs}))
    observers = []
    for j in range(2):
        ws = await websockets.connect(url, max_size=None, ping_interval=None)
        await hello(ws, "obs%d-%d" % (j, t0), ["delta"])
        observers.append(ws)
    counting = [False]

    async def count(j, ws):
        try:
            while True:
                msg = await ws.recv()
                v = json.loads(msg)
                if counting[0] and v.get("type") == "registry_sync":
                    out["observer_bytes"][j] += len(msg)
                    out["observer_msgs"][j] += 1
        except websockets.ConnectionClosed:
            pass

    readers = [asyncio.ensure_future(count(j, ws)) for j, ws in enumerate(observers)]
    await asyncio.sleep(2)  # the observers' full tables (feeder routes included) arrive
    atk = "flip-%d" % t0
    ws = await websockets.connect(url, max_size=None, ping_interval=None)
    await hello(ws, atk)
    await wait_type(ws, "registry_sync", 10)
    await asyncio.sleep(1)
    counting[0] = True
    for i in range(flips):
        rs = [{"path": [atk], "seq": 1, "servers": []}]
        if i % 2 == 0:
            rs.append({"path": [atk, "flipped-node"], "seq": i + 1, "servers": ["counter"]})
        text = env("registry_sync", atk, {"seq": i + 1, "routes": rs})
        await ws.send(text)
        out["in_bytes"] += len(text)
        await asyncio.sleep(0.02)
    await asyncio.sleep(2)
    counting[0] = False
    for r in readers:
        r.cancel()
    for w in observers + [ws, feeder]:
        await w.close()
    return out


async def pending(url, slots, legit_addr):
    out = {"codes": {}, "legit_advert": False, "legit_code": None}
    socks = []
    for _ in range(slots):
        try:
            ws = await websockets.connect(url, max_size=None, open_timeout=10, ping_interval=None)
            socks.append(ws)
        except Exception as e:  # refused at the handshake: count it too
            out["codes"]["connect:" + type(e).__name__] = out["codes"].get("connect:" + type(e).__name__, 0) + 1
    await asyncio.sleep(0.5)
    legit = await websockets.connect(url, max_size=None, open_timeout=10, ping_interval=None,
                                     local_addr=(legit_addr, 0))
    me = "legit-%d" % int(time.time())
    await hello(legit, me)
    try:
        v = await wait_type(legit, "registry_sync", 10)
        out["legit_advert"] = v is not None
    except websockets.ConnectionClosed:
        out["legit_code"] = legit.close_code
    await legit.close()
    codes = await asyncio.gather(*(closed_code(ws, 15) for ws in socks))
    for c in codes:
        out["codes"][str(c)] = out["codes"].get(str(c), 0) + 1
    return out


async def many(url, n):
    out = {"codes": {}, "adverts": 0}
    socks = []
    t0 = int(time.time())
    for i in range(n):
        ws = await websockets.connect(url, max_size=None, open_timeout=10, ping_interval=None,
                                      local_addr=("127.0.0.%d" % (2 + i % 10), 0))
        socks.append(ws)
        try:
            await hello(ws, "many%d-%d" % (i, t0))
        except websockets.ConnectionClosed:
            pass  # refused at once: its code is collected below
    await asyncio.sleep(1)
    codes = await asyncio.gather(*(closed_code(ws, 3) for ws in socks))
    for c in codes:
        out["codes"][str(c)] = out["codes"].get(str(c), 0) + 1
    for ws in socks:
        await ws.close()
    return out


def main():
    mode, url = sys.argv[1], sys.argv[2]
    assert url.startswith("ws://127.0.0.1:"), "attacks target 127.0.0.1 only"
    a = sys.argv[3:]
    if mode == "huge":
        res = huge(url, int(a[0]), int(a[1]), int(a[2]), float(a[3]), int(a[4]))
    elif mode == "flip":
        res = flip(url, int(a[0]), int(a[1]))
    elif mode == "many":
        res = many(url, int(a[0]))
    elif mode == "pending":
        res = pending(url, int(a[0]), a[1])
    else:
        raise SystemExit("unknown mode " + mode)
    out = asyncio.run(asyncio.wait_for(res, 120))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
