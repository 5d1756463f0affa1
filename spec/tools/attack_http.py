"""Attacks on relaynet's HTTP and WebSocket bounds (spec/attack_http_spec.lua).

    python3 attack_http.py MODE PORT PID [N]

MODE is one of:
  slowpost  N connections from 127.0.0.1, each a POST declaring a 1 MiB body
            and then sending one byte every 2 s (a slow-body attack);
  flood     N idle TCP connections from 127.0.0.1 (a connection flood), held
            past the server's header deadline;
  wsflood   one WebSocket from 127.0.0.1 sending small messages as fast as it
            can, then one sending 1 MiB binary messages as fast as it can.

While an attack runs, a legitimate client bound to 127.0.0.2 (also loopback
on Linux, but another source address) keeps asking the server for GET / (or
echoing over its own WebSocket) and the server's RSS (/proc/PID/status) is
sampled. Prints one JSON object with what happened; the spec asserts on it.
Every loop is bounded in count and in time, and only 127.0.0.1 is attacked.
"""

import asyncio
import errno
import json
import resource
import selectors
import socket
import sys
import time

MODE, PORT, PID = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
N = int(sys.argv[4]) if len(sys.argv) > 4 else 0
LEGIT = "127.0.0.2"


def rss_kb():
    try:
        with open("/proc/%d/status" % PID) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def alive():
    return rss_kb() is not None


def legit_get(path="/"):
    """One GET from 127.0.0.2 on a fresh connection: the status, or None."""
    s = socket.socket()
    s.settimeout(10)
    try:
        s.bind((LEGIT, 0))
        s.connect(("127.0.0.1", PORT))
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body
    except (OSError, ValueError, IndexError):
        return None, b""
    finally:
        s.close()


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def status_of(data):
    try:
        return int(data.split(b"\r\n", 1)[0].split()[1])
    except (ValueError, IndexError):
        return None


def slowpost(n):
    raise_nofile(n)
    base = rss_kb()
    out = {"base_rss_kb": base, "max_rss_kb": base, "statuses": {}, "closed_silently": 0,
           "legit_ok": 0, "legit_fail": 0, "unresolved": 0}
    socks = {}
    sel = selectors.DefaultSelector()
    for _ in range(n):
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", PORT))
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n")
        except OSError:
            out["closed_silently"] += 1
            s.close()
            continue
        s.setblocking(False)
        socks[s] = b""
        sel.register(s, selectors.EVENT_READ)
    t0 = time.time()
    last_drip = 0
    while socks and time.time() - t0 < 45:
        if time.time() - last_drip >= 2:
            last_drip = time.time()
            for s in list(socks):
                try:
                    s.send(b"a")
                except OSError:
                    pass  # the read side reports it
            st, _ = legit_get()
            out["legit_ok" if st == 200 else "legit_fail"] += 1
            r = rss_kb()
            if r is not None and r > out["max_rss_kb"]:
                out["max_rss_kb"] = r
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                chunk = s.recv(4096)
            except OSError:
                chunk = b""
            if chunk:
                socks[s] += chunk
                if b"\r\n" not in socks[s]:
                    continue
            st = status_of(socks[s])
            if st is None:
                out["closed_silently"] += 1
            else:
                out["statuses"][str(st)] = out["statuses"].get(str(st), 0) + 1
                out.setdefault("first_answer_s", round(time.time() - t0, 1))
                out["last_answer_s"] = round(time.time() - t0, 1)
            sel.unregister(s)
            s.close()
            del socks[s]
    out["unresolved"] = len(socks)
    for s in socks:
        s.close()
    time.sleep(2)
    out["after_rss_kb"] = rss_kb()
    st, _ = legit_get()
    out["legit_after"] = st
    return out


def flood(n):
    raise_nofile(n)
    base = rss_kb()
    out = {"base_rss_kb": base, "max_rss_kb": base, "legit_ok": 0, "legit_fail": 0}
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        try:
            s.connect(("127.0.0.1", PORT))
        except OSError:
            s.close()
            continue
        socks.append(s)
    out["connected"] = len(socks)

    def count_open():
        opened = 0
        for s in socks:
            if s.fileno() < 0:
                continue
            s.setblocking(False)
            try:
                if s.recv(1, socket.MSG_PEEK) == b"":
                    s.close()
                    continue
                opened += 1
            except BlockingIOError:
                opened += 1
            except OSError:
                s.close()
        return opened

    time.sleep(2)
    out["open_after_2s"] = count_open()
    # Another connection from the flooding address is refused ...
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", PORT))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        out["attacker_extra"] = status_of(s.recv(100)) or "closed"
    except OSError as e:
        out["attacker_extra"] = "closed" if e.errno in (errno.ECONNRESET, errno.EPIPE) else str(e)
    s.close()
    # ... while another address is served.
    t0 = time.time()
    while time.time() - t0 < 4:
        st, _ = legit_get()
        out["legit_ok" if st == 200 else "legit_fail"] += 1
        r = rss_kb()
        if r is not None and r > out["max_rss_kb"]:
            out["max_rss_kb"] = r
        time.sleep(0.5)
    # The idle ones hit the header deadline (lws timeout_secs, 10 s).
    t0 = time.time()
    while time.time() - t0 < 25:
        left = count_open()
        if left == 0:
            break
        time.sleep(1)
    out["open_after_deadline"] = count_open()
    out["deadline_wait_s"] = round(time.time() - t0, 1)
    for s in socks:
        s.close()
    time.sleep(1)
    # The address's slots are free again.
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect(("127.0.0.1", PORT))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out["attacker_after"] = status_of(s.recv(100))
    except OSError as e:
        out["attacker_after"] = str(e)
    s.close()
    out["after_rss_kb"] = rss_kb()
    return out


async def wsflood():
    import websockets
    base = rss_kb()
    out = {"base_rss_kb": base, "max_rss_kb": base, "legit_ok": 0, "legit_fail": 0, "attacks": []}
    url = "ws://127.0.0.1:%d/" % PORT
    stop = asyncio.Event()

    async def legit():
        async with websockets.connect(url, local_addr=(LEGIT, 0)) as w:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    await w.send("legit %d" % i)
                    m = await asyncio.wait_for(w.recv(), 10)
                    out["legit_ok" if m == "legit %d" % i else "legit_fail"] += 1
                except (asyncio.TimeoutError, websockets.ConnectionClosed):
                    out["legit_fail"] += 1
                    return
                r = rss_kb()
                if r is not None and r > out["max_rss_kb"]:
                    out["max_rss_kb"] = r
                await asyncio.sleep(0.1)

    async def attack(payload, binary, limit_s, max_count):
        res = {"size": len(payload), "sent": 0}
        async with websockets.connect(url, max_size=None, max_queue=None) as w:
            async def reader():
                try:
                    async for _ in w:
                        pass
                except websockets.ConnectionClosed:
                    pass
            rt = asyncio.ensure_future(reader())
            t0 = time.time()
            try:
                while res["sent"] < max_count and time.time() - t0 < limit_s and not rt.done():
                    await w.send(payload)
                    res["sent"] += 1
                    if res["sent"] % 50 == 0:
                        await asyncio.sleep(0)
            except websockets.ConnectionClosed:
                pass
            try:
                await asyncio.wait_for(rt, 15)
            except asyncio.TimeoutError:
                pass
            res["code"], res["reason"] = w.close_code, w.close_reason
            res["seconds"] = round(time.time() - t0, 1)
        out["attacks"].append(res)

    lt = asyncio.ensure_future(legit())
    await asyncio.sleep(0.5)
    await attack("x" * 16, False, 20, 500000)
    await attack(b"\x00" * (1 << 20), True, 30, 2000)
    await asyncio.sleep(1)
    stop.set()
    await asyncio.wait_for(lt, 15)
    out["after_rss_kb"] = rss_kb()
    return out


if MODE == "slowpost":
    result = slowpost(N or 400)
elif MODE == "flood":
    result = flood(N or 3000)
elif MODE == "wsflood":
    result = asyncio.run(wsflood())
else:
    sys.exit("unknown mode " + MODE)
result["server_alive"] = alive()
st, body = legit_get("/limits-stats")
result["stats"] = json.loads(body) if st == 200 else None
print(json.dumps(result))
