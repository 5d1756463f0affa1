#!/usr/bin/python3
"""rpc_pubsub_client.py: a scripted JSON-RPC pub/sub client for
spec/jsonrpc_pubsub_spec.lua (Debian's /usr/bin/python3: http.client and
python3-websockets 10.x), so the methods are checked by a client nobody here
wrote.

  rpc_pubsub_client.py STEPS

STEPS is a file holding a JSON array of steps, run in order. Each step adds
one entry to "results" (null when it records nothing); the script prints ONE
JSON line {"results": [...]} and exits 0 when it could run, or prints
{"error": "...", "results": [...]} (what ran so far) when a step failed or
a deadline passed. Exit status 2 is a usage error. Responses and
notifications are recorded as the raw text received.

Steps ("ws" names a WebSocket opened by an "open" step):
  {"op": "open", "ws": NAME, "url": URL, "headers": {...}}   headers are
      optional; with "refused": true the upgrade must be refused, and the
      HTTP status is recorded.
  {"op": "call", "ws": NAME, "req": OBJ}     sends OBJ (its "id" must be set)
      and reads until the response with that id; notifications read in the
      meantime are kept for "notes". Records the response text.
  {"op": "send", "ws": NAME, "text": TEXT, "ids": [ID, ...]}   sends TEXT
      (e.g. a batch) and reads until a response (or batch) holding each id;
      records the response texts.
  {"op": "notes", "ws": NAME, "n": N}        waits for N notifications (kept
      ones first) and records them as a list of texts.
  {"op": "quiet", "ws": NAME}                sends p2p.peers and records the
      notifications that arrive before its answer (a list, normally []).
  {"op": "http", "url": URL, "req": OBJ, "headers": {...}}   POSTs OBJ (a
      request or a batch); records the body text.
  {"op": "http_until", "url": URL, "req": OBJ, "result": V, "timeout": S}
      POSTs OBJ every 50 ms until the response's result equals V (interest
      takes an advert to travel); records the last body text.
  {"op": "close", "ws": NAME}                closes it with 1000.
"""

import asyncio
import http.client
import json
import sys
import time
import urllib.parse

import websockets

TIMEOUT = 20


def out(obj):
    print(json.dumps(obj, sort_keys=True))
    sys.stdout.flush()


def post(url, obj, headers=None):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=TIMEOUT)
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    try:
        conn.request("POST", u.path or "/", body=json.dumps(obj).encode("utf-8"), headers=hdrs)
        resp = conn.getresponse()
        return resp.read().decode("utf-8")
    finally:
        conn.close()


class Conn:
    def __init__(self, ws):
        self.ws = ws
        self.notes = []  # notification texts not recorded yet

    async def read_until(self, ids):
        """Reads until responses for every id in `ids` came; returns their
        texts in arrival order and keeps the notifications."""
        want, got = set(ids), []
        while want:
            msg = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
            v = json.loads(msg)
            if isinstance(v, dict) and v.get("method") == "subscription" and "id" not in v:
                self.notes.append(msg)
                continue
            items = v if isinstance(v, list) else [v]
            hit = False
            for item in items:
                if isinstance(item, dict) and item.get("id") in want:
                    want.discard(item.get("id"))
                    hit = True
            if not hit:
                raise RuntimeError("unexpected message: " + msg[:300])
            got.append(msg)
        return got


async def run(steps, results):
    conns = {}
    try:
        for step in steps:
            op = step["op"]
            if op == "open":
                try:
                    ws = await websockets.connect(step["url"], ping_interval=None, max_size=2 ** 22,
                                                  open_timeout=TIMEOUT, close_timeout=5,
                                                  extra_headers=step.get("headers", {}))
                except websockets.exceptions.InvalidStatusCode as e:
                    if not step.get("refused"):
                        raise
                    results.append(e.status_code)
                    continue
                if step.get("refused"):
                    raise RuntimeError("the upgrade was accepted")
                conns[step["ws"]] = Conn(ws)
                results.append(None)
            elif op == "call":
                c = conns[step["ws"]]
                await c.ws.send(json.dumps(step["req"]))
                got = await c.read_until([step["req"]["id"]])
                results.append(got[0])
            elif op == "send":
                c = conns[step["ws"]]
                await c.ws.send(step["text"])
                results.append(await c.read_until(step["ids"]))
            elif op == "notes":
                c = conns[step["ws"]]
                n = step["n"]
                while len(c.notes) < n:
                    msg = await asyncio.wait_for(c.ws.recv(), TIMEOUT)
                    v = json.loads(msg)
                    if not (isinstance(v, dict) and v.get("method") == "subscription"):
                        raise RuntimeError("expected a notification, got: " + msg[:300])
                    c.notes.append(msg)
                results.append(c.notes[:n])
                c.notes = c.notes[n:]
            elif op == "quiet":
                c = conns[step["ws"]]
                before = len(c.notes)
                await c.ws.send(json.dumps({"jsonrpc": "2.0", "id": "quiet", "method": "p2p.peers"}))
                await c.read_until(["quiet"])
                results.append(c.notes[before:])
                c.notes = c.notes[:before]
            elif op == "http":
                results.append(post(step["url"], step["req"], step.get("headers")))
            elif op == "http_until":
                deadline = time.monotonic() + step.get("timeout", 15)
                while True:
                    body = post(step["url"], step["req"])
                    v = json.loads(body)
                    if v.get("result") == step["result"]:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError("http_until: still %s after %s s" % (body, step.get("timeout", 15)))
                    time.sleep(0.05)
                results.append(body)
            elif op == "close":
                await conns.pop(step["ws"]).ws.close(1000, "done")
                results.append(None)
            else:
                raise RuntimeError("unknown op " + op)
    finally:
        for c in conns.values():
            await c.ws.close(1000, "done")


def main(argv):
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        steps = json.load(f)
    results = []
    try:
        asyncio.run(run(steps, results))
    except Exception as e:  # report instead of a traceback-only failure
        out({"error": "%s: %s (step %d)" % (type(e).__name__, e, len(results) + 1), "results": results})
        return 0
    out({"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
