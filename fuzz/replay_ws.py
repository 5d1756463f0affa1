#!/usr/bin/env python3
"""Replays a ws_receive fuzz input over a real WebSocket (spec/fuzz_regressions_spec.lua).

    python3 fuzz/replay_ws.py HOST PORT FILE

The input format is fuzz/ws_receive.c's: byte 0 is the harness's
configuration (ignored here: the server's own limits apply), then records of
[flags][len][len bytes], flags bit 0 = FIN, bit 1 = binary. Each record is
sent as one masked frame: the first frame of a message as text or binary,
the others as continuations. Then a close frame; the script reads until the
server closes (or 5 s) and prints what it received, one line per frame.
Exit status 0 unless the connection could not be opened.
"""
import base64
import os
import socket
import struct
import sys
import time


def frame(opcode, payload, fin):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    data = open(path, "rb").read()
    s = socket.create_connection((host, port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    resp = b""
    while b"\r\n\r\n" not in resp:
        chunk = s.recv(4096)
        if not chunk:
            print("no handshake")
            return 1
        resp += chunk
    if b" 101 " not in resp.split(b"\r\n", 1)[0]:
        print("handshake refused:", resp.split(b"\r\n", 1)[0].decode(errors="replace"))
        return 1
    pos, in_msg = 1, False
    try:
        while pos < len(data):
            flags = data[pos]
            pos += 1
            n = data[pos] if pos < len(data) else 0
            pos += 1
            payload = data[pos:pos + n]
            pos += n
            opcode = 0 if in_msg else (2 if flags & 2 else 1)
            s.sendall(frame(opcode, payload, flags & 1))
            in_msg = not (flags & 1)
        s.sendall(frame(8, struct.pack("!H", 1000), True))
    except OSError as e:  # the server may close first (1007, 1009, ...)
        print("send stopped:", e)
    deadline = time.time() + 5
    got = resp.split(b"\r\n\r\n", 1)[1]
    while time.time() < deadline:
        try:
            chunk = s.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    # Frames from the server are unmasked: print opcode and length.
    i = 0
    while i + 2 <= len(got):
        op, n = got[i] & 0x0F, got[i + 1] & 0x7F
        i += 2
        if n == 126:
            n = struct.unpack("!H", got[i:i + 2])[0]
            i += 2
        elif n == 127:
            n = struct.unpack("!Q", got[i:i + 8])[0]
            i += 8
        body = got[i:i + n]
        i += n
        extra = f" code {struct.unpack('!H', body[:2])[0]}" if op == 8 and len(body) >= 2 else ""
        print(f"frame opcode {op} length {n}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
