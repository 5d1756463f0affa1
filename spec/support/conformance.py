#!/usr/bin/python3
"""conformance.py: RFC 6455 conformance probes with raw frames.

Python standard library only, in the style of probe.py. Each probe performs
the HTTP upgrade by hand, writes hand-built frames (in the TCP writes the
probe names), records every frame the server sends in the order it arrives,
and prints ONE JSON line on stdout:

  {"probe": "...", "status": 101, "events": [...], "result": "...", ...}

Fields of the JSON line:
  probe      the probe name
  status     HTTP status of the upgrade (101 when it succeeded)
  events     what the server sent, in order: {"kind": "pong" | "ping" |
             "text" | "binary" | "close" | "eof", "t": seconds since the
             handshake, "hex": payload in hex, "text": decoded text (text
             messages), "code"/"reason" (close)}; a fragmented message from
             the server is one event; "eof" is the TCP connection ending
  result     "eof"     the server closed the TCP connection
             "timeout" the deadline passed before that
             "error"   the probe itself failed (see `error`)
  close_code the code of the server's close frame (null: none)
  close_t    seconds from the handshake to the server's close frame
  handshake  true when the closing handshake completed: the server sent a
             close frame and then closed the TCP connection
  sent       payload bytes the probe wrote after its frame headers
             (huge-length probes)

Usage: conformance.py PROBE --port N [--host 127.0.0.1] [--path /]
                      [--timeout S] [--length N] [--send-bytes N]
                      [--split MODE] [--count N] [--rcvbuf BYTES]
Run `conformance.py list` for the probe names.
"""

import argparse
import base64
import json
import os
import select
import socket
import struct
import sys
import time

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
KIND = {OP_TEXT: "text", OP_BIN: "binary", OP_CLOSE: "close", OP_PING: "ping", OP_PONG: "pong"}


def mask_bytes(payload, key):
    if not payload:
        return b""
    k = (key * (len(payload) // 4 + 2))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(len(payload), "big")


def header(opcode, length, fin=True, key=b"\x11\x22\x33\x44"):
    """The head of a masked frame announcing `length` bytes (any 64-bit
    value, the top bit included)."""
    b0 = (0x80 if fin else 0) | opcode
    if length < 126:
        head = struct.pack("!BB", b0, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, length)
    return head + key


def frame(opcode, payload=b"", fin=True):
    key = os.urandom(4)
    return header(opcode, len(payload), fin, key) + mask_bytes(payload, key)


def close_frame(code=1000, reason=b""):
    return frame(OP_CLOSE, struct.pack("!H", code) + reason)


class Conn:
    def __init__(self, args):
        self.args = args
        if args.rcvbuf:
            # before connect, so that the window is small from the start
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
            self.sock.settimeout(args.timeout)
            self.sock.connect((args.host, args.port))
        else:
            self.sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.events = []
        self.frag = None  # (opcode, payload) of a fragmented message from the server
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.timeout
        self.eof = False
        self.sent = 0

    def now(self):
        return round(time.monotonic() - self.t0, 4)

    def _fill(self, deadline):
        left = min(deadline, self.deadline) - time.monotonic()
        if left <= 0:
            raise TimeoutError()
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            raise TimeoutError()
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            return False
        self.buf += data
        return True

    def upgrade(self):
        a = self.args
        key = base64.b64encode(os.urandom(16)).decode()
        req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (a.path, a.host, a.port, key))
        self.sock.sendall(req.encode())
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(self.deadline):
                break
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        parts = head.decode("latin-1").split(" ", 2)
        self.t0 = time.monotonic()
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _frame(self):
        """One whole frame from buf: (fin, opcode, payload), or None."""
        if len(self.buf) < 2:
            return None
        b0, b1 = self.buf[0], self.buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            if len(self.buf) < 4:
                return None
            n, off = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            if len(self.buf) < 10:
                return None
            n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
        if len(self.buf) < off + n:
            return None
        payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def _record(self, fin, op, payload):
        if op == OP_CONT or (op in (OP_TEXT, OP_BIN) and not fin):
            if op != OP_CONT:
                self.frag = (op, payload)
            elif self.frag:
                self.frag = (self.frag[0], self.frag[1] + payload)
            if not fin:
                return None
            op, payload = self.frag if self.frag else (OP_TEXT, payload)
            self.frag = None
        ev = {"kind": KIND.get(op, "op%d" % op), "t": self.now(), "hex": payload[:64].hex()}
        if op == OP_TEXT:
            ev["text"] = payload.decode("utf-8", "replace")
            ev["len"] = len(payload)
        elif op == OP_BIN:
            ev["len"] = len(payload)
        elif op == OP_CLOSE:
            ev["code"] = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            ev["reason"] = payload[2:].decode("utf-8", "replace")
        self.events.append(ev)
        return ev

    def read_until(self, pred, deadline=None):
        """Reads and records frames until pred(event) is true for one, or
        EOF (recorded as an "eof" event). Returns that event, or None on EOF
        or at the deadline."""
        deadline = deadline or self.deadline
        while not self.eof:
            f = self._frame()
            if f:
                ev = self._record(*f)
                if ev and pred(ev):
                    return ev
                continue
            try:
                if not self._fill(deadline):
                    self.eof = True
                    self.events.append({"kind": "eof", "t": self.now()})
            except TimeoutError:
                return None
        return None

    def count(self, kind):
        return sum(1 for e in self.events if e["kind"] == kind)

    def await_pong(self, seconds=0.3):
        """Reads for up to `seconds` more when no pong has come yet."""
        if not self.count("pong"):
            self.read_until(lambda e: e["kind"] == "pong", time.monotonic() + seconds)

    def finish(self, code=1000):
        """Ends the connection and reads until EOF: sends a close frame with
        `code`, or, when the server closed first, echoes its code."""
        closes = [e for e in self.events if e["kind"] == "close"]
        if closes:
            self.send(close_frame(closes[0]["code"] or 1000))
        elif not self.eof:
            self.send(close_frame(code))
        self.read_until(lambda e: False)

    def report(self, name, status, **extra):
        closes = [e for e in self.events if e["kind"] == "close"]
        out = {
            "probe": name,
            "status": status,
            "events": self.events,
            "result": "eof" if self.eof else "timeout",
            "close_code": closes[0]["code"] if closes else None,
            "close_t": closes[0]["t"] if closes else None,
            "handshake": bool(closes) and self.eof,
            "sent": self.sent,
        }
        out.update(extra)
        return out


# -- probes ---------------------------------------------------------------
# Each takes (conn, args), writes its frames, reads what it needs, and leaves
# the closing to conn.finish().

def is_msg(e):
    return e["kind"] in ("text", "binary", "close")


def p_ping_between_fragments(c, a):
    """A text message in two fragments with a ping between them, in one TCP
    write: the pong must come before the echoed message."""
    c.send(frame(OP_TEXT, b"Hello, ", fin=False) + frame(OP_PING, b"ping-1") +
           frame(OP_CONT, b"fragmented world", fin=True))
    c.read_until(is_msg)
    c.await_pong()


def p_ping_between_fragments_split(c, a):
    """The same, each frame in its own TCP write 50 ms apart."""
    c.send(frame(OP_TEXT, b"Hello, ", fin=False))
    time.sleep(0.05)
    c.send(frame(OP_PING, b"ping-1"))
    time.sleep(0.05)
    c.send(frame(OP_CONT, b"fragmented world", fin=True))
    c.read_until(is_msg)
    c.await_pong()


def p_pings_between_fragments(c, a):
    """Five fragments, a ping after the second and one after the fourth, a
    pause of 0.3 s after the first ping (as a conformance suite does): two
    pongs, then the message."""
    c.send(frame(OP_TEXT, b"frag1 ", fin=False) + frame(OP_CONT, b"frag2 ", fin=False) +
           frame(OP_PING, b"ping-1"))
    pause = time.monotonic() + 0.3
    c.read_until(lambda e: e["kind"] == "pong", pause)  # (its time shows when it came)
    time.sleep(max(0.0, pause - time.monotonic()))
    c.send(frame(OP_CONT, b"frag3 ", fin=False) + frame(OP_CONT, b"frag4 ", fin=False) +
           frame(OP_PING, b"ping-2") + frame(OP_CONT, b"frag5", fin=True))
    c.read_until(is_msg)
    if c.count("pong") < 2:
        c.read_until(lambda e: e["kind"] == "pong" and c.count("pong") >= 2, time.monotonic() + 0.3)


def p_big_fragments_with_ping(c, a):
    """A text message in two 3000-byte fragments (more than one receive
    buffer each) with a ping between them, in one TCP write."""
    c.send(frame(OP_TEXT, b"a" * 3000, fin=False) + frame(OP_PING, b"ping-1") +
           frame(OP_CONT, b"b" * 3000, fin=True))
    c.read_until(is_msg)
    c.await_pong()


def p_ping_then_message(c, a):
    """A ping and then a whole text message in one TCP write: the pong
    answers what came first."""
    c.send(frame(OP_PING, b"ping-1") + frame(OP_TEXT, b"after the ping"))
    c.read_until(is_msg)
    c.await_pong()


def p_message_ping_message(c, a):
    """A message, a ping, a message, in one TCP write: the pong comes
    before the second echo."""
    c.send(frame(OP_TEXT, b"first") + frame(OP_PING, b"ping-1") + frame(OP_TEXT, b"second"))
    c.read_until(lambda e: e["kind"] == "close" or c.count("text") >= 2)
    c.await_pong()


def p_huge_length(c, a):
    """One text frame announcing --length bytes (default 2^63-1; any 64-bit
    value, the top bit included), then --send-bytes of its payload in 1 KiB
    writes (the first one separate from the header), 5 ms apart, stopping
    when the server answers. Reads until the server's close frame."""
    c.send(header(OP_TEXT, a.length, True))
    chunk = mask_bytes(b"x" * 1024, b"\x11\x22\x33\x44")
    left = a.send_bytes
    while left > 0:
        n = min(left, len(chunk))
        if not c.send(chunk[:n]):
            break
        c.sent += n
        left -= n
        ev = c.read_until(lambda e: e["kind"] == "close", time.monotonic() + 0.005)
        if ev or c.eof:
            break
    c.read_until(lambda e: e["kind"] == "close")


# A valid text message of 4-byte code points (U+1D11E, U+1F600, ...) with
# ASCII between them.
UTF8_4 = "\U0001D11E a \U0001F600 b \U00010348\U0001F680".encode("utf-8")


def utf8_writes(split):
    """The TCP writes that carry UTF8_4 as one text message, cut as `split`
    says: "none" (one frame, one write), "frames" (a fragment per code
    point, one write), "mid" (fragments that cut code points, one write),
    "bytes" (one frame, a TCP write per byte), "frames-bytes" (fragments
    cutting code points, a TCP write per byte), "octets" (a fragment per
    byte, one write), "octets-writes" (a fragment per byte, a write each)."""
    msg = UTF8_4
    if split == "none":
        return [frame(OP_TEXT, msg)]
    if split == "bytes":
        data = frame(OP_TEXT, msg)
        return [data[i:i + 1] for i in range(len(data))]
    if split == "frames":
        cuts = [i for i in range(1, len(msg)) if (msg[i] & 0xC0) != 0x80]
    elif split in ("octets", "octets-writes"):
        cuts = list(range(1, len(msg)))
    elif split in ("mid", "frames-bytes"):
        cuts = [1, 2, 6, 9, 10, 15, len(msg) - 1]
    else:
        raise ValueError("unknown --split " + split)
    parts = [msg[i:j] for i, j in zip([0] + cuts, cuts + [len(msg)])]
    frames = [frame(OP_TEXT if i == 0 else OP_CONT, p, fin=(i == len(parts) - 1))
              for i, p in enumerate(parts)]
    if split == "octets-writes":
        return frames
    data = b"".join(frames)
    if split == "frames-bytes":
        return [data[i:i + 1] for i in range(len(data))]
    return [data]


def send_writes(c, writes):
    for w in writes:
        c.send(w)
        if len(writes) > 1:
            time.sleep(0.002)


def p_utf8_4byte(c, a):
    """A valid text message of 4-byte UTF-8 sequences, cut as --split says
    (see utf8_writes), read back; then the probe closes with 1000: the echo
    must come back and the closing handshake complete."""
    send_writes(c, utf8_writes(a.split))
    c.read_until(is_msg)


def p_utf8_4byte_close_race(c, a):
    """The same message, then the close frame in its own TCP write at once,
    without waiting for the echo: the closing handshake must complete (the
    echo may come before the server's close frame, nothing after it)."""
    send_writes(c, utf8_writes(a.split))
    c.send(close_frame(1000))
    c.read_until(lambda e: e["kind"] == "close")


def p_utf8_4byte_close_together(c, a):
    """The 4-byte UTF-8 message and the close frame in one TCP write (the
    server may close before it echoes; either way the closing handshake
    must complete)."""
    c.send(frame(OP_TEXT, UTF8_4) + close_frame(1000))
    c.read_until(lambda e: e["kind"] == "close")


def p_close_while_writing(c, a):
    """--count text messages of 4-byte UTF-8 (--length bytes each, about),
    sent from a connection with a 4 KiB receive buffer that reads nothing
    until it has sent a close frame 0.3 s later: the server is still
    writing its echoes when the close arrives. The closing handshake must
    complete after whatever echoes the server sends first."""
    msg = UTF8_4 * max(1, a.length // len(UTF8_4))
    for _ in range(a.count):
        c.send(frame(OP_TEXT, msg))
    time.sleep(0.3)
    c.send(close_frame(1000))
    c.read_until(lambda e: e["kind"] == "close")


def p_control_extended_length(c, a):
    """A ping announcing 126 bytes with the 16-bit extended length (control
    frames carry at most 125): close 1002."""
    c.send(frame(OP_PING, b"p" * 126))
    c.read_until(lambda e: e["kind"] == "close")


PROBES = {
    "ping-between-fragments": p_ping_between_fragments,
    "ping-between-fragments-split": p_ping_between_fragments_split,
    "pings-between-fragments": p_pings_between_fragments,
    "big-fragments-with-ping": p_big_fragments_with_ping,
    "ping-then-message": p_ping_then_message,
    "message-ping-message": p_message_ping_message,
    "huge-length": p_huge_length,
    "utf8-4byte": p_utf8_4byte,
    "utf8-4byte-close-together": p_utf8_4byte_close_together,
    "utf8-4byte-close-race": p_utf8_4byte_close_race,
    "control-extended-length": p_control_extended_length,
    "close-while-writing": p_close_while_writing,
}


# -- python3-websockets clients -----------------------------------------------
# The same checks through a client implementation nobody here wrote. They run
# under Debian's python3 (H.PY), where python3-websockets is installed, and
# print one JSON line: {"probe", "runs": [...]} or {"probe", "error"}.

def ws_utf8(a):
    """The 4-byte UTF-8 message sent whole and fragmented, each echoed and
    then closed with 1000: each run's echo, close code and closing time."""
    import asyncio
    import websockets

    async def run(fragmented):
        url = "ws://%s:%d%s" % (a.host, a.port, a.path)
        text = UTF8_4.decode("utf-8")
        async with websockets.connect(url, close_timeout=a.timeout) as ws:
            await ws.send([text[:3], text[3:7], text[7:]] if fragmented else text)
            echo = await asyncio.wait_for(ws.recv(), a.timeout)
            t = time.monotonic()
            await ws.close()
            return {"fragmented": fragmented, "echo_ok": echo == text, "code": ws.close_code,
                    "close_s": round(time.monotonic() - t, 4)}

    async def main():
        return [await run(f) for f in (False, True, False, True)]
    return {"runs": asyncio.run(main())}


def ws_too_big(a):
    """One message of --length bytes: the server's close code and how long
    after the send it came."""
    import asyncio
    import websockets

    async def main():
        url = "ws://%s:%d%s" % (a.host, a.port, a.path)
        async with websockets.connect(url, max_size=None, close_timeout=a.timeout) as ws:
            t = time.monotonic()
            try:
                await ws.send(b"x" * a.length)
                await asyncio.wait_for(ws.recv(), a.timeout)
            except websockets.ConnectionClosed:
                pass
            except asyncio.TimeoutError:
                return {"code": None, "after_s": None}
            await ws.wait_closed()
            return {"code": ws.close_code, "after_s": round(time.monotonic() - t, 4)}
    return asyncio.run(main())


WS_CLIENTS = {"ws-utf8": ws_utf8, "ws-too-big": ws_too_big}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("probe")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--path", default="/")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--length", type=int, default=(1 << 63) - 1)
    ap.add_argument("--send-bytes", type=int, default=0)
    ap.add_argument("--split", default="none")
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--rcvbuf", type=int, default=0)
    a = ap.parse_args()
    if a.probe == "list":
        for name, fn in list(PROBES.items()) + list(WS_CLIENTS.items()):
            print("%-30s %s" % (name, fn.__doc__.split("\n")[0]))
        return 0
    if a.probe in WS_CLIENTS:
        try:
            out = WS_CLIENTS[a.probe](a)
            out["probe"] = a.probe
        except Exception as e:
            out = {"probe": a.probe, "result": "error", "error": repr(e)}
        print(json.dumps(out))
        return 0
    if a.probe == "close-while-writing":
        a.rcvbuf = a.rcvbuf or 4096
        a.length = a.length if a.length < (1 << 62) else 990000
    if a.probe not in PROBES:
        print(json.dumps({"probe": a.probe, "result": "error", "error": "unknown probe"}))
        return 2
    try:
        c = Conn(a)
        status = c.upgrade()
        if status != 101:
            print(json.dumps({"probe": a.probe, "status": status, "events": [], "result": "http"}))
            return 0
        PROBES[a.probe](c, a)
        c.finish()
        print(json.dumps(c.report(a.probe, status)))
    except Exception as e:  # the probe itself failed: say so in the JSON line
        print(json.dumps({"probe": a.probe, "result": "error", "error": repr(e)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
