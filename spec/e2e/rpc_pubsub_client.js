#!/usr/bin/env node
// JSON-RPC pub/sub with the node `ws` client (spec/jsonrpc_pubsub_spec.lua).
//
//   node spec/e2e/rpc_pubsub_client.js SUB_URL PUB_URL
//
// SUB_URL and PUB_URL are ws://.../rpc of two nodes. On SUB_URL it
// subscribes to "node.*"; on PUB_URL it publishes "node.probe" until the
// publish reaches one node (interest takes an advert to travel), then
// publishes three messages; the subscriber must get them in order. Then it
// unsubscribes (twice), fills the connection with 100 subscriptions in one
// batch and asks for a 101st. It prints ONE JSON line with what it received
// (raw texts) and exits 0; exit 1 with a message on a failure or after 20 s,
// 2 on bad usage.
"use strict";

const WebSocket = require("ws");

const [subUrl, pubUrl] = process.argv.slice(2);
if (!subUrl || !pubUrl) {
  console.error("usage: node rpc_pubsub_client.js SUB_URL PUB_URL");
  process.exit(2);
}

function fail(msg) {
  console.error("rpc_pubsub_client: FAIL: " + msg);
  process.exit(1);
}
setTimeout(() => fail("timed out after 20 s"), 20000).unref();

// A connection that answers call(obj) with the response text of obj.id,
// and keeps notifications for note().
function open(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const waiting = new Map();
    const notes = [];
    let noteWaiter = null;
    ws.on("error", (e) => reject(e));
    ws.on("message", (data, isBinary) => {
      if (isBinary) return fail("binary message");
      const text = data.toString("utf8");
      const v = JSON.parse(text);
      if (!Array.isArray(v) && v.method === "subscription") {
        notes.push(text);
        if (noteWaiter) { const w = noteWaiter; noteWaiter = null; w(); }
        return;
      }
      const id = Array.isArray(v) ? v[0].id : v.id;
      const w = waiting.get(id);
      if (!w) return fail("unexpected message " + text.slice(0, 200));
      waiting.delete(id);
      w(text);
    });
    ws.on("open", () => resolve({
      ws,
      call(obj) {
        return new Promise((res) => { waiting.set(Array.isArray(obj) ? obj[0].id : obj.id, res); ws.send(JSON.stringify(obj)); });
      },
      async note() {
        while (notes.length === 0) await new Promise((res) => { noteWaiter = res; });
        return notes.shift();
      },
      pending() { return notes.length; },
    }));
  });
}

const req = (id, method, params) => ({ jsonrpc: "2.0", id, method, params });

(async () => {
  const sub = await open(subUrl);
  const pub = await open(pubUrl);
  const out = {};
  out.subscribe = await sub.call(req(1, "subscribe", { topic: "node.*" }));
  const sid = JSON.parse(out.subscribe).result;
  for (let i = 0; ; i++) {
    const r = JSON.parse(await pub.call(req("probe" + i, "publish", ["node.probe", i])));
    if (r.result === 1) break;
    if (i > 300) fail("the publisher never saw the subscriber's interest: " + JSON.stringify(r));
    await new Promise((res) => setTimeout(res, 50));
  }
  await sub.note(); // the probe that reached it
  out.published = [
    await pub.call(req(2, "publish", { topic: "node.a", message: { k: [1, 2], s: "ünï ✓" } })),
    await pub.call(req(3, "publish", ["node.b", "text"])),
    await pub.call(req(4, "publish", ["node.c", null])),
  ];
  out.notes = [await sub.note(), await sub.note(), await sub.note()];
  out.unsubscribe = [
    await sub.call(req(5, "unsubscribe", [sid])),
    await sub.call(req(6, "unsubscribe", { subscription: sid })),
  ];
  const batch = [];
  for (let i = 1; i <= 100; i++) batch.push(req("b" + i, "subscribe", ["node.n" + i]));
  out.batch = JSON.parse(await sub.call(batch)).map((r) => r.result);
  out.over = await sub.call(req(7, "subscribe", ["node.n101"]));
  out.left = sub.pending();
  sub.ws.close(1000, "done");
  pub.ws.close(1000, "done");
  console.log(JSON.stringify(out));
  process.exit(0);
})().catch((e) => fail(e.stack || String(e)));
