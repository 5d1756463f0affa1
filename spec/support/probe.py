#!/usr/bin/python3
"""probe.py: a raw-socket WebSocket/HTTP probe for relaynet's protocol specs.

Python standard library only. It performs the HTTP upgrade by hand, sends
hand-built (possibly malformed) frames and prints the outcome as ONE JSON
line on stdout, for example:

  {"probe": "unmasked", "result": "close", "code": 1002, "reason": "...", ...}

Fields of the JSON line:
  probe     the probe name
  result    "close"   the server sent a close frame (code/reason set)
            "eof"     the server closed the TCP connection without a close frame
            "timeout" nothing conclusive happened before --timeout
            "http"    the HTTP handshake/request was answered with `status`
            "error"   the probe itself failed (see `error`)
  code      close code received from the server (null: none / empty close)
  reason    close reason received (decoded with errors="replace")
  reason_hex close reason bytes in hex
  status    HTTP status of the upgrade or of the HTTP request
  headers   response headers (lower-cased names) for "http" results
  body      response body for HTTP probes (decoded with errors="replace")
  messages  data messages received before the close: [{"opcode", "text", "hex", "len"}]
  pings     number of pings the server sent
  elapsed   seconds from the end of the handshake to the outcome
  sent_bytes payload bytes the probe managed to send (size probes)

Usage: probe.py PROBE --port N [--host 127.0.0.1] [--path /] [--origin O]
                [--timeout S] [--code N] [--size N]
Run `probe.py list` for the probe names.
"""

import argparse
import base64
import hashlib
import json
import os
import select
import socket
import struct
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ProbeError(Exception):
    pass


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, length=None):
    """Builds one frame. `length` overrides the declared payload length."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0xF)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + mask_bytes(payload, key)


def mask_bytes(payload, key, offset=0):
    if not payload:
        return b""
    # XOR through big integers: fast enough for megabytes.
    k = (key * (len(payload) // 4 + 2))[offset % 4:offset % 4 + len(payload)]
    a = int.from_bytes(payload, "big")
    b = int.from_bytes(k, "big")
    return (a ^ b).to_bytes(len(payload), "big")


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


class Conn:
    def __init__(self, args):
        self.args = args
        self.sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
        self.buf = b""
        self.pings = 0
        self.messages = []
        self.t0 = time.monotonic()
        self.deadline = time.monotonic() + args.timeout
        self.sent_bytes = 0

    # -- reading ---------------------------------------------------------
    def _fill(self, deadline=None):
        """Reads more bytes; returns False on EOF. Raises TimeoutError."""
        deadline = deadline or self.deadline
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError()
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            raise TimeoutError()
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return False
        if not data:
            return False
        self.buf += data
        return True

    def read_http_head(self):
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                if not self.buf:
                    return None, {}, b""
                break
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        self.buf = rest
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return status, headers, head

    def read_http_body(self, headers):
        n = headers.get("content-length")
        try:
            if n is not None:
                n = int(n)
                while len(self.buf) < n:
                    if not self._fill():
                        break
                body, self.buf = self.buf[:n], self.buf[n:]
                return body
            # no length: read until EOF or a short idle period
            while True:
                if not self._fill(min(self.deadline, time.monotonic() + 0.5)):
                    break
        except TimeoutError:
            pass
        body, self.buf = self.buf, b""
        return body

    def read_frame(self):
        """Returns (fin, opcode, payload) or None on EOF. Raises TimeoutError."""
        while True:
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                n = b1 & 0x7F
                off = 2
                if n == 126:
                    if len(self.buf) >= 4:
                        n = struct.unpack("!H", self.buf[2:4])[0]
                        off = 4
                    else:
                        n = None
                elif n == 127:
                    if len(self.buf) >= 10:
                        n = struct.unpack("!Q", self.buf[2:10])[0]
                        off = 10
                    else:
                        n = None
                if n is not None:
                    key = None
                    if b1 & 0x80:
                        off += 4
                    if len(self.buf) >= off + n:
                        if b1 & 0x80:
                            key = self.buf[off - 4:off]
                        payload = self.buf[off:off + n]
                        if key:
                            payload = mask_bytes(payload, key)
                        self.buf = self.buf[off + n:]
                        return bool(b0 & 0x80), b0 & 0x0F, payload
            if not self._fill():
                return None

    # -- writing ---------------------------------------------------------
    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    # -- WebSocket --------------------------------------------------------
    def upgrade(self, origin=None, key="auto", version="13", extra=None, token="websocket"):
        a = self.args
        if key == "auto":
            key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            "GET %s HTTP/1.1" % a.path,
            "Host: %s:%d" % (a.host, a.port),
            "Upgrade: %s" % token,
            "Connection: Upgrade",
        ]
        if key is not None:
            lines.append("Sec-WebSocket-Key: %s" % key)
        if version is not None:
            lines.append("Sec-WebSocket-Version: %s" % version)
        if origin:
            lines.append("Origin: %s" % origin)
        lines += extra or []
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, headers, _ = self.read_http_head()
        self.status, self.headers = status, headers
        if status == 101 and key is not None:
            want = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
            if headers.get("sec-websocket-accept") != want:
                raise ProbeError("bad Sec-WebSocket-Accept: %r" % headers.get("sec-websocket-accept"))
        self.t0 = time.monotonic()
        return status, headers

    def outcome(self, answer_pings=True, reply_close=True):
        """Reads frames until a close frame, EOF or the deadline."""
        frag = None
        try:
            while True:
                f = self.read_frame()
                if f is None:
                    return {"result": "eof"}
                fin, op, payload = f
                if op == OP_PING:
                    self.pings += 1
                    if answer_pings:
                        self.send(frame(OP_PONG, payload))
                    continue
                if op == OP_PONG:
                    continue
                if op == OP_CLOSE:
                    res = {"result": "close", "code": None, "reason": "", "reason_hex": ""}
                    if len(payload) >= 2:
                        res["code"] = struct.unpack("!H", payload[:2])[0]
                        res["reason"] = payload[2:].decode("utf-8", "replace")
                        res["reason_hex"] = payload[2:].hex()
                    if reply_close:
                        self.send(frame(OP_CLOSE, payload[:2]))
                    return res
                if op in (OP_TEXT, OP_BIN):
                    frag = [op, payload]
                elif op == OP_CONT and frag:
                    frag[1] += payload
                if fin and frag:
                    op, data = frag
                    frag = None
                    self.messages.append({
                        "opcode": op,
                        "text": data.decode("utf-8", "replace") if op == OP_TEXT else None,
                        "hex": data.hex() if len(data) <= 4096 else None,
                        "len": len(data),
                    })
        except TimeoutError:
            return {"result": "timeout"}

    def wait_messages(self, count):
        """Reads until `count` data messages arrived (answering pings)."""
        try:
            while len(self.messages) < count:
                f = self.read_frame()
                if f is None:
                    return {"result": "eof"}
                fin, op, payload = f
                if op == OP_PING:
                    self.pings += 1
                    self.send(frame(OP_PONG, payload))
                    continue
                if op == OP_CLOSE:
                    res = {"result": "close", "code": None, "reason": ""}
                    if len(payload) >= 2:
                        res["code"] = struct.unpack("!H", payload[:2])[0]
                        res["reason"] = payload[2:].decode("utf-8", "replace")
                    return res
                if op in (OP_TEXT, OP_BIN) and fin:
                    self.messages.append({
                        "opcode": op,
                        "text": payload.decode("utf-8", "replace") if op == OP_TEXT else None,
                        "hex": payload.hex() if len(payload) <= 4096 else None,
                        "len": len(payload),
                    })
        except TimeoutError:
            return {"result": "timeout"}
        return None

    def stream(self, head, total, chunk=16384):
        """Sends `head` then `total` masked payload bytes in chunks, while
        watching for the server's reaction; stops early when it reacts."""
        key = head[-4:]
        if not self.send(head):
            return
        sent = 0
        self.sock.setblocking(False)
        try:
            while sent < total and time.monotonic() < self.deadline:
                r, w, _ = select.select([self.sock], [self.sock], [], 0.05)
                if r:
                    return  # the server answered (close frame or EOF)
                if w:
                    n = min(chunk, total - sent)
                    data = mask_bytes(b"x" * n, key, sent)
                    try:
                        k = self.sock.send(data)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        return
                    sent += k
                    self.sent_bytes = sent
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(self.args.timeout)


# -- probes ---------------------------------------------------------------------

KOSME = "κόσμε".encode("utf-8")  # valid UTF-8 (the Autobahn test string)
VALID_SPLIT = "héllo wörld € 𝄞 done".encode("utf-8")

WS_PROBES = {}


def ws_probe(name):
    def deco(fn):
        WS_PROBES[name] = fn
        return fn
    return deco


@ws_probe("echo")
def p_echo(c, a):
    """A well-formed text message; expects it back, then a clean 1000 close."""
    c.send(frame(OP_TEXT, b"hello probe"))
    r = c.wait_messages(1)
    if r:
        return r
    c.send(frame(OP_CLOSE, close_payload(1000)))
    return c.outcome()


@ws_probe("unmasked")
def p_unmasked(c, a):
    c.send(frame(OP_TEXT, b"not masked", mask=False))
    return c.outcome()


@ws_probe("opcode-3")
def p_opcode3(c, a):
    c.send(frame(0x3, b"reserved data opcode"))
    return c.outcome()


@ws_probe("opcode-b")
def p_opcodeb(c, a):
    c.send(frame(0xB, b"reserved control opcode"))
    return c.outcome()


@ws_probe("rsv1")
def p_rsv1(c, a):
    c.send(frame(OP_TEXT, b"rsv1 without extension", rsv=4))
    return c.outcome()


@ws_probe("control-126")
def p_control126(c, a):
    c.send(frame(OP_PING, b"p" * 126))
    return c.outcome()


@ws_probe("fragmented-ping")
def p_fragping(c, a):
    c.send(frame(OP_PING, b"frag", fin=False))
    c.send(frame(OP_CONT, b"ment"))
    return c.outcome()


@ws_probe("continuation-first")
def p_contfirst(c, a):
    c.send(frame(OP_CONT, b"no start", fin=True))
    return c.outcome()


@ws_probe("text-during-fragment")
def p_textdurfrag(c, a):
    c.send(frame(OP_TEXT, b"first half ", fin=False))
    c.send(frame(OP_TEXT, b"a new message", fin=True))
    return c.outcome()


@ws_probe("data-after-close")
def p_dataafterclose(c, a):
    """Starts a message, sends a close frame, then the message's last
    fragment and a whole message: nothing after the close is data."""
    c.send(frame(OP_TEXT, b"before close ", fin=False))
    c.send(frame(OP_CLOSE, close_payload(1000)))
    c.send(frame(OP_CONT, b"after close"))
    c.send(frame(OP_TEXT, b"another"))
    return c.outcome(reply_close=False)


@ws_probe("close-1byte")
def p_close1(c, a):
    c.send(frame(OP_CLOSE, b"\x03"))
    return c.outcome()


@ws_probe("close-code")
def p_closecode(c, a):
    """Sends a close frame with --code (and reason "probe")."""
    c.send(frame(OP_CLOSE, close_payload(a.code, b"probe")))
    return c.outcome(reply_close=False)


@ws_probe("close-reason-utf8")
def p_closereason(c, a):
    c.send(frame(OP_CLOSE, close_payload(1000, b"bad \xff\xfe reason")))
    return c.outcome(reply_close=False)


@ws_probe("utf8-single")
def p_utf8single(c, a):
    c.send(frame(OP_TEXT, KOSME + b"\xff" + b"tail"))  # 0xFF never occurs in UTF-8
    return c.outcome()


@ws_probe("utf8-fragmented")
def p_utf8frag(c, a):
    # Each fragment is valid on its own prefix; the second makes it invalid:
    # \xe2\x82 (start of a 3-byte sequence) followed by "(" is not UTF-8.
    c.send(frame(OP_TEXT, b"valid start \xe2\x82", fin=False))
    c.send(frame(OP_CONT, b"(invalid continuation", fin=True))
    return c.outcome()


@ws_probe("utf8-fragmented-final-incomplete")
def p_utf8fragfinal(c, a):
    # The message ends in the middle of a sequence.
    c.send(frame(OP_TEXT, b"ends mid sequence ", fin=False))
    c.send(frame(OP_CONT, b"\xf0\x9d\x84", fin=True))
    return c.outcome()


@ws_probe("utf8-overlong")
def p_utf8overlong(c, a):
    c.send(frame(OP_TEXT, b"overlong slash \xc0\xaf"))
    return c.outcome()


@ws_probe("utf8-surrogate")
def p_utf8surrogate(c, a):
    c.send(frame(OP_TEXT, b"surrogate \xed\xa0\x80"))
    return c.outcome()


@ws_probe("utf8-above-max")
def p_utf8abovemax(c, a):
    c.send(frame(OP_TEXT, b"above U+10FFFF \xf4\x90\x80\x80"))
    return c.outcome()


@ws_probe("fragmented-utf8-valid")
def p_fragutf8valid(c, a):
    """A valid text message in fragments split inside multi-byte sequences;
    expects the whole message echoed, then a clean close."""
    data = VALID_SPLIT
    cuts = [2, 13, 16, 18, 20]  # inside é, inside €, inside 𝄞 (twice)
    pieces = []
    prev = 0
    for cut in cuts + [len(data)]:
        pieces.append(data[prev:cut])
        prev = cut
    for i, p in enumerate(pieces):
        c.send(frame(OP_TEXT if i == 0 else OP_CONT, p, fin=(i == len(pieces) - 1)))
    r = c.wait_messages(1)
    if r:
        return r
    c.send(frame(OP_CLOSE, close_payload(1000)))
    res = c.outcome()
    res["expected_text"] = data.decode("utf-8")
    return res


@ws_probe("too-big-frame")
def p_toobigframe(c, a):
    """One binary frame declaring 4 GiB; streams up to --size payload bytes."""
    c.stream(frame(OP_BIN, b"", length=1 << 32), a.size)
    return c.outcome()


@ws_probe("too-big-fragments")
def p_toobigfrags(c, a):
    """Many 1000-byte binary fragments (FIN=0) until --size bytes."""
    sent = 0
    first = True
    c.sock.setblocking(False)
    try:
        while sent < a.size and time.monotonic() < c.deadline:
            r, w, _ = select.select([c.sock], [c.sock], [], 0.05)
            if r:
                break
            if not w:
                continue
            f = frame(OP_BIN if first else OP_CONT, b"y" * 1000, fin=False)
            first = False
            try:
                c.sock.setblocking(True)
                c.sock.sendall(f)
            except OSError:
                break
            finally:
                c.sock.setblocking(False)
            sent += 1000
            c.sent_bytes = sent
    finally:
        c.sock.setblocking(True)
        c.sock.settimeout(a.timeout)
    return c.outcome()


@ws_probe("big-ok")
def p_bigok(c, a):
    """A binary message of exactly --size bytes; expects it echoed."""
    c.send(frame(OP_BIN, b"z" * a.size))
    r = c.wait_messages(1)
    if r:
        return r
    c.send(frame(OP_CLOSE, close_payload(1000)))
    return c.outcome()


@ws_probe("no-pong")
def p_nopong(c, a):
    """Never answers pings; waits to be hung up."""
    return c.outcome(answer_pings=False)


@ws_probe("hold")
def p_hold(c, a):
    """Keeps the connection open (answering pings) until --timeout."""
    return c.outcome()


def run_ws(name, a):
    c = Conn(a)
    try:
        key = "auto"
        version = "13"
        if name == "hs-no-key":
            key = None
        elif name == "hs-bad-version":
            version = "12"
        elif name == "hs-no-version":
            version = None
        token = "WebSocket" if name == "hs-upgrade-capital" else "websocket"
        status, headers = c.upgrade(origin=a.origin, key=key, version=version, token=token)
        if status != 101:
            res = {"result": "http", "status": status, "headers": headers}
            if status is not None:
                res["body"] = c.read_http_body(headers).decode("utf-8", "replace")
            else:
                res["result"] = "eof"
            return res
        if name.startswith("hs-"):
            # handshake probes that were accepted: report and close cleanly
            c.send(frame(OP_CLOSE, close_payload(1000)))
            res = c.outcome()
            res["status"] = 101
            return res
        res = WS_PROBES[name](c, a)
        res["status"] = 101
        return res
    finally:
        res_extra = {"pings": c.pings, "messages": c.messages,
                     "elapsed": round(time.monotonic() - c.t0, 3), "sent_bytes": c.sent_bytes}
        c.sock.close()
        run_ws.extra = res_extra


# -- HTTP probes ---------------------------------------------------------------------

def http_exchange(a, raw):
    c = Conn(a)
    try:
        c.send(raw)
        try:
            status, headers, _ = c.read_http_head()
        except TimeoutError:
            return {"result": "timeout"}
        if status is None:
            return {"result": "eof"}
        body = c.read_http_body(headers)
        return {"result": "http", "status": status, "headers": headers,
                "body": body.decode("utf-8", "replace")}
    finally:
        c.sock.close()


def http_req(a, method, path, headers=(), body=b""):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s:%d" % (a.host, a.port),
             "Connection: close"] + list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


HTTP_PROBES = {
    "http-get": lambda a: http_req(a, "GET", a.path),
    "http-unknown-path": lambda a: http_req(a, "GET", "/definitely/not/here"),
    "http-wrong-method": lambda a: http_req(a, "DELETE", a.path),
    "http-body-too-big": lambda a: http_req(a, "POST", a.path, ["Content-Length: %d" % a.size],
                                            b"b" * a.size),
    "http-body-ok": lambda a: http_req(a, "POST", a.path, ["Content-Length: %d" % a.size],
                                       b"b" * a.size),
    "http-chunked": lambda a: http_req(a, "POST", a.path, ["Transfer-Encoding: chunked"],
                                       b"5\r\nhello\r\n0\r\n\r\n"),
    "http-bad-content-length": lambda a: http_req(a, "POST", a.path, ["Content-Length: 12abc"],
                                                  b"12abc"),
    "http-negative-content-length": lambda a: http_req(a, "POST", a.path, ["Content-Length: -5"],
                                                       b"hello"),
    "http-plus-content-length": lambda a: http_req(a, "POST", a.path, ["Content-Length: +5"],
                                                   b"hello"),
    "http-big-headers": lambda a: http_req(a, "GET", a.path,
                                           ["X-Big-%d: %s" % (i, "h" * 1000) for i in range(10)]),
    "http-big-header-value": lambda a: http_req(a, "GET", a.path, ["X-Big: " + "v" * 9000]),
    "http-garbage": lambda a: b"THIS IS NOT HTTP\r\n\r\n",
}


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--path", default="/")
    ap.add_argument("--origin", default=None)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--code", type=int, default=1000)
    ap.add_argument("--size", type=int, default=0)
    a = ap.parse_args(argv)
    if a.probe == "list":
        for n in sorted(list(WS_PROBES) + list(HTTP_PROBES) +
                        ["hs-no-key", "hs-bad-version", "hs-no-version", "hs-upgrade", "hs-upgrade-capital"]):
            print(n)
        return 0
    name = a.probe
    run_ws.extra = {}
    try:
        if name in HTTP_PROBES:
            res = http_exchange(a, HTTP_PROBES[name](a))
        elif name in WS_PROBES or name.startswith("hs-"):
            res = run_ws(name, a)
        else:
            print(json.dumps({"probe": name, "result": "error", "error": "unknown probe"}))
            return 2
    except (ProbeError, OSError) as e:
        res = {"result": "error", "error": "%s: %s" % (type(e).__name__, e)}
    out = {"probe": name}
    if name == "close-code":
        out["sent_code"] = a.code
    out.update(run_ws.extra)
    out.update(res)
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
