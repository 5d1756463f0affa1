#!/usr/bin/python3
"""rpc_client.py: JSON-RPC 2.0 clients for spec/jsonrpc_spec.lua (Debian's
/usr/bin/python3: http.client and python3-websockets 10.x).

Every mode prints ONE JSON line on stdout and exits 0 when it could run (the
spec makes the assertions on that line); it exits 2 on a usage error.
Responses are reported as the raw text received, so the spec can check the
exact bytes (integers printed as integers, member order, ...).

Modes:
  http URL CASES   CASES is a file holding a JSON array of request bodies
                   (strings). Each is POSTed, in order, on ONE keep-alive
                   connection (http.client). Prints
                   {"results": [{"status", "content_type", "length", "body"}]}
  ws URL CASES     CASES is a file holding a JSON array of steps
                   {"send": TEXT, "expect": N}: sends TEXT as a text message,
                   then receives N messages. After the last step it sends
                   {"jsonrpc":"2.0","id":"rpc-client-end","method":"p2p.peers"}
                   and reads until that request's response: any message in
                   between is unexpected (so a notification that got an
                   answer shows up without waiting for a timeout). Prints
                   {"results": [[msg, ...], ...], "extra": [msg, ...]}
"""

import asyncio
import http.client
import json
import sys
import urllib.parse

import websockets

TIMEOUT = 20
END_ID = "rpc-client-end"


def out(obj):
    print(json.dumps(obj, sort_keys=True))
    sys.stdout.flush()


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def mode_http(url, cases):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT)
    results = []
    for body in cases:
        data = body.encode("utf-8")
        conn.request("POST", u.path or "/", body=data,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        results.append({
            "status": resp.status,
            "content_type": resp.getheader("Content-Type"),
            "length": len(raw),
            "body": raw.decode("utf-8"),
        })
        if resp.will_close:  # keep going on a fresh connection
            conn.close()
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT)
    conn.close()
    out({"mode": "http", "results": results})


async def mode_ws(url, steps):
    results, extra = [], []
    async with websockets.connect(url, ping_interval=None, max_size=2 ** 22,
                                  open_timeout=TIMEOUT, close_timeout=5) as ws:
        for step in steps:
            await ws.send(step["send"])
            got = []
            for _ in range(step.get("expect", 1)):
                msg = await asyncio.wait_for(ws.recv(), TIMEOUT)
                got.append(msg if isinstance(msg, str) else "BINARY:" + msg.hex())
            results.append(got)
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": END_ID, "method": "p2p.peers"}))
        while True:
            msg = await asyncio.wait_for(ws.recv(), TIMEOUT)
            try:
                decoded = json.loads(msg)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict) and decoded.get("id") == END_ID:
                break
            extra.append(msg if isinstance(msg, str) else "BINARY:" + msg.hex())
        await ws.close(1000, "done")
    out({"mode": "ws", "results": results, "extra": extra})


def main(argv):
    if len(argv) != 3 or argv[0] not in ("http", "ws"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, url, cases = argv[0], argv[1], load(argv[2])
    try:
        if mode == "http":
            mode_http(url, cases)
        else:
            asyncio.run(mode_ws(url, cases))
    except Exception as e:  # report instead of a traceback-only failure
        out({"mode": mode, "error": "%s: %s" % (type(e).__name__, e)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
