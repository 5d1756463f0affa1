"""Attacks on relaynet's HTTP and WebSocket bounds (spec/attack_http_spec.lua).

    python3 attack_http.py MODE PORT PID [N]

MODE is one of:
  slowpost  N connections from 127.0.0.1, each a POST declaring a 1 MiB body
            and then sending one byte every 2 s (a slow-body attack);
  flood     N idle TCP connections from 127.0.0.1 (a connection flood), held
            past the server's header deadline;
  wsflood   one WebSocket from 127.0.0.1 sending small messages as fast as it
            can, then one sending 1 MiB binary messages as fast as it can;
  slowread  N WebSockets from 127.0.0.1 (default 100) that never read (receive
            buffer 4 KiB) and keep sending 512 KiB binary messages for 20 s:
            every echo has to be held by the server (its max_buffered budget).

While an attack runs, a legitimate client bound to 127.0.0.2 (also loopback
on Linux, but another source address) keeps asking the server for GET / (or
echoing over its own WebSocket) and the server's RSS (/proc/PID/status) is
sampled. Prints one JSON object with what happened; the spec asserts on it.
Every loop is bounded in count and in time, and only 127.0.0.1 is attacked.
"""

import asyncio
import base64
import errno
import json
import os
import resource
import selectors
import socket
import struct
import sys
import threading
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


def ws_handshake(s):
    """Upgrades a connected blocking socket to a WebSocket on /."""
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)  # byte by byte: nothing after the headers is consumed
        if not chunk:
            raise OSError("closed during the handshake")
        head += chunk
    if status_of(head) != 101:
        raise OSError("upgrade refused: %r" % head[:40])


def ws_frame(payload, opcode):
    """One final client frame (masked, as RFC 6455 requires)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload)) if n < 4096 else \
        (int.from_bytes(payload, "big") ^ int.from_bytes(mask * (n // 4) + mask[:n % 4], "big")).to_bytes(n, "big")
    return head + mask + body


def ws_read(s):
    """One server frame: (opcode, payload)."""
    def exact(k):
        data = b""
        while len(data) < k:
            chunk = s.recv(k - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data
    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", exact(8))[0]
    return b0 & 0x0F, exact(n)


def slowread(n):
    raise_nofile(n)
    base = rss_kb()
    out = {"base_rss_kb": base, "max_rss_kb": base, "legit_ok": 0, "legit_fail": 0,
           "opened": 0, "messages_sent": 0, "send_errors": 0, "max_buffered_seen": 0}
    stop = threading.Event()

    def legit():
        # A well-behaved client on another address: small echoes, read at once.
        try:
            s = socket.socket()
            s.settimeout(10)
            s.bind((LEGIT, 0))
            s.connect(("127.0.0.1", PORT))
            ws_handshake(s)
        except OSError:
            out["legit_fail"] += 1
            return
        i = 0
        while not stop.is_set():
            i += 1
            text = ("legit %d" % i).encode()
            try:
                s.sendall(ws_frame(text, 1))
                op, data = ws_read(s)
                out["legit_ok" if (op, data) == (1, text) else "legit_fail"] += 1
            except OSError:
                out["legit_fail"] += 1
                break
            time.sleep(0.2)
        s.close()

    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        try:
            s.settimeout(10)
            s.connect(("127.0.0.1", PORT))
            ws_handshake(s)
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        socks.append(s)
    out["opened"] = len(socks)
    lt = threading.Thread(target=legit)
    lt.start()
    frame = ws_frame(b"\x5a" * (512 * 1024), 2)
    pending = {s: memoryview(frame) for s in socks}
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    t0 = last_sample = time.time()
    while pending and time.time() - t0 < 20:
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                k = s.send(pending[s][:262144])
            except OSError:
                out["send_errors"] += 1  # the server closed it
                sel.unregister(s)
                del pending[s]
                continue
            pending[s] = pending[s][k:]
            if not len(pending[s]):
                out["messages_sent"] += 1
                pending[s] = memoryview(frame)
        if time.time() - last_sample >= 0.5:
            last_sample = time.time()
            r = rss_kb()
            if r is not None and r > out["max_rss_kb"]:
                out["max_rss_kb"] = r
            st, body = legit_get("/limits-stats")
            if st == 200:
                b = json.loads(body)["server"]["buffered"]
                out["max_buffered_seen"] = max(out["max_buffered_seen"], b)
    out["attack_s"] = round(time.time() - t0, 1)
    st, body = legit_get("/limits-stats")
    out["stats_during"] = json.loads(body) if st == 200 else None
    for s in socks:
        s.close()
    time.sleep(4)  # the server's sweep trims freed memory once a second
    out["after_rss_kb"] = rss_kb()
    stop.set()
    lt.join(20)
    return out


if MODE == "slowpost":
    result = slowpost(N or 400)
elif MODE == "flood":
    result = flood(N or 3000)
elif MODE == "wsflood":
    result = asyncio.run(wsflood())
elif MODE == "slowread":
    result = slowread(N or 100)
else:
    sys.exit("unknown mode " + MODE)
result["server_alive"] = alive()
st, body = legit_get("/limits-stats")
result["stats"] = json.loads(body) if st == 200 else None
print(json.dumps(result))
