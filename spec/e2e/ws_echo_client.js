#!/usr/bin/env node
// Checks an echo server (examples/echo.lua) with the node `ws` client.
//
//   node spec/e2e/ws_echo_client.js ws://127.0.0.1:PORT/
//
// Sends text and binary messages (embedded zeros, non-ASCII, 200 KB) one at
// a time and checks that each comes back byte for byte with the same type.
// Then closes with 1000 and checks the server's close code. Exits 0 when
// everything matched, 1 with a message otherwise, 2 on bad usage.
"use strict";

const WebSocket = require("ws");

const url = process.argv[2];
if (!url || !/^wss?:\/\//.test(url)) {
  console.error("usage: node ws_echo_client.js ws://host:port/path");
  process.exit(2);
}

function fail(msg) {
  console.error("ws_echo_client: FAIL: " + msg);
  process.exit(1);
}

setTimeout(() => fail("timed out after 15 s"), 15000);

const big = Buffer.alloc(200 * 1024);
for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 8)) & 0xff;

const cases = [
  { name: "short text", data: "hello relaynet", binary: false },
  { name: "text with an embedded NUL and non-ASCII", data: "a\u0000b – ünïcødé ✓ 🚀", binary: false },
  { name: "empty text", data: "", binary: false },
  { name: "binary with zeros", data: Buffer.from([0, 1, 2, 0, 0, 255, 0]), binary: true },
  { name: "200 KB binary", data: big, binary: true },
  { name: "200 KB text", data: "x".repeat(200 * 1024 - 3) + "end", binary: false },
];

const ws = new WebSocket(url, { maxPayload: 4 * 1024 * 1024 });
let current = 0;

function sendNext() {
  const c = cases[current];
  ws.send(c.data, { binary: c.binary });
}

ws.on("open", sendNext);
ws.on("error", (err) => fail("socket error: " + err.message));

ws.on("message", (data, isBinary) => {
  const c = cases[current];
  if (!c) return fail("unexpected extra message of " + data.length + " bytes");
  if (isBinary !== c.binary) return fail(`${c.name}: came back as ${isBinary ? "binary" : "text"}`);
  const want = Buffer.isBuffer(c.data) ? c.data : Buffer.from(c.data, "utf8");
  if (!Buffer.from(data).equals(want)) {
    return fail(`${c.name}: echo differs (sent ${want.length} bytes, got ${data.length})`);
  }
  current += 1;
  if (current < cases.length) return sendNext();
  ws.close(1000, "done");
});

ws.on("close", (code, reason) => {
  if (current < cases.length) return fail(`closed early (${code} ${reason}) during: ${cases[current].name}`);
  if (code !== 1000) return fail(`close code ${code} (${reason}), expected 1000`);
  console.log(`ws_echo_client: OK (${cases.length} messages echoed)`);
  process.exit(0);
});
