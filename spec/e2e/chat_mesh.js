#!/usr/bin/env node
// Browser end-to-end test of examples/chat.lua on two mesh nodes, in
// headless Chromium: one room across the nodes.
//
//   node spec/e2e/chat_mesh.js http://127.0.0.1:PORT_A/ http://127.0.0.1:PORT_B/ [--screenshot=/tmp/mesh.png]
//
// The two URLs are two chat nodes linked to each other (spec/chat_mesh_spec.lua
// starts them). Alice's page is served by node A and Bob's by node B (separate
// browser contexts). The steps:
//
//  1. Alice joins on A: "1 online".
//  2. Bob joins on B: his page shows "2 online" and the user list [Alice, Bob]
//     (Alice may reach B's room a moment after his welcome: then as a notice
//     "Alice joined").
//  3. Alice's page shows "Bob joined", "2 online" and [Alice, Bob].
//  4. Alice says something and Bob sees it; Bob answers and Alice sees it.
//  5. Carol's page on B asks for the name Alice: refused, the name is taken
//     on the other node. She joins as Carol; Alice sees her join, "3 online".
//  6. Bob closes his page: Alice sees "Bob left" and "2 online", Carol (on
//     Bob's node) too.
//  7. Every page opened exactly one WebSocket, to /ws of the node that served it.
//
// Exits 0 on success, 1 with a message naming the failed step otherwise,
// 2 on bad usage, 3 when the whole run exceeds the hard timeout.
"use strict";

const { chromium } = require("playwright-core");

const HARD_TIMEOUT_MS = 40000;
const STEP_TIMEOUT_MS = 8000;

const [urlA, urlB] = process.argv.slice(2, 4);
const shotArg = process.argv.slice(4).find((a) => a.startsWith("--screenshot="));
const screenshot = shotArg ? shotArg.slice("--screenshot=".length) : null;
const badArg = process.argv.slice(4).find((a) => !/^--screenshot=./.test(a));
if (!urlA || !urlB || !/^http:\/\//.test(urlA) || !/^http:\/\//.test(urlB) || urlA === urlB || badArg) {
  console.error("usage: node chat_mesh.js http://host:portA/ http://host:portB/ [--screenshot=file.png]");
  process.exit(2);
}

let browser = null;
let step = "starting";
const pageErrors = [];

setTimeout(() => {
  console.error(`chat_mesh: FAIL: hard timeout of ${HARD_TIMEOUT_MS / 1000} s reached during: ${step}`);
  process.exit(3);
}, HARD_TIMEOUT_MS);

// Waits until some element matching `selector` has exactly `text` as its
// trimmed textContent.
async function waitText(page, selector, text) {
  try {
    await page.waitForFunction(
      ([sel, want]) => Array.from(document.querySelectorAll(sel)).some((e) => e.textContent.trim() === want),
      [selector, text],
      { timeout: STEP_TIMEOUT_MS, polling: 50 },
    );
  } catch (e) {
    const seen = await page.$$eval(selector, (els) => els.map((e) => e.textContent.trim())).catch(() => []);
    throw new Error(`no ${selector} with text ${JSON.stringify(text)}; found ${JSON.stringify(seen)}`);
  }
}

// Waits until the page's user list is exactly `names`.
async function waitUsers(page, names) {
  try {
    await page.waitForFunction(
      (want) => JSON.stringify(Array.from(document.querySelectorAll("#users li")).map((e) => e.textContent)) === want,
      JSON.stringify(names),
      { timeout: STEP_TIMEOUT_MS, polling: 50 },
    );
  } catch (e) {
    const seen = await page.$$eval("#users li", (els) => els.map((e) => e.textContent)).catch(() => []);
    throw new Error(`user list: expected ${JSON.stringify(names)}, got ${JSON.stringify(seen)}`);
  }
}

// Waits for a chat message bubble from `name` saying `text`.
async function waitSaid(page, name, text, mine) {
  try {
    await page.waitForFunction(
      ([who, want, own]) => Array.from(document.querySelectorAll("#messages li.msg")).some((li) =>
        li.querySelector(".meta b").textContent === who &&
        li.querySelector(".text").textContent === want &&
        li.classList.contains("mine") === own),
      [name, text, mine],
      { timeout: STEP_TIMEOUT_MS, polling: 50 },
    );
  } catch (e) {
    const seen = await page.$$eval("#messages li", (els) => els.map((e) => e.className + ": " + e.textContent.trim()))
      .catch(() => []);
    throw new Error(`no message from ${name} saying ${JSON.stringify(text)} (mine=${mine}); list: ${JSON.stringify(seen)}`);
  }
}

// Opens `url` in a new browser context and joins as `name`.
async function openAndJoin(url, name) {
  const context = await browser.newContext({ viewport: { width: 900, height: 560 } });
  const page = await context.newPage();
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws.url()));
  page.on("pageerror", (err) => { pageErrors.push(`${name}: ${err.message}`); });
  page.on("console", (msg) => { if (msg.type() === "error") pageErrors.push(`${name}: console: ${msg.text()}`); });
  const resp = await page.goto(url, { timeout: STEP_TIMEOUT_MS });
  if (!resp || resp.status() !== 200) throw new Error(`GET ${url} answered ${resp && resp.status()}`);
  await page.fill("#name", name);
  await page.click("#join");
  return { context, page, sockets, url };
}

// Checks that the page opened exactly one WebSocket, to /ws of its node.
function checkSockets(who, p) {
  const want = `ws://${new URL(p.url).host}/ws`;
  if (p.sockets.length !== 1 || p.sockets[0] !== want) {
    throw new Error(`${who}'s page opened WebSockets ${JSON.stringify(p.sockets)}; expected [${JSON.stringify(want)}]`);
  }
}

async function main() {
  step = "launching chromium";
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    timeout: 15000,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });

  step = "Alice joins on node A";
  const a = await openAndJoin(urlA, "Alice");
  await waitText(a.page, "#messages li.notice.join", "You joined as Alice");
  await waitText(a.page, "#count", "1 online");

  step = "Bob joins on node B and sees Alice in the room";
  const b = await openAndJoin(urlB, "Bob");
  await waitText(b.page, "#messages li.notice.join", "You joined as Bob");
  await waitText(b.page, "#count", "2 online");
  await waitUsers(b.page, ["Alice", "Bob"]);

  step = "Alice, on node A, sees Bob join";
  await waitText(a.page, "#messages li.notice.join", "Bob joined");
  await waitText(a.page, "#count", "2 online");
  await waitUsers(a.page, ["Alice", "Bob"]);

  step = "Alice says hello on A; Bob sees it on B";
  await a.page.fill("#text", "hello from node A");
  await a.page.click("#send");
  await waitSaid(b.page, "Alice", "hello from node A", false);
  await waitSaid(a.page, "Alice", "hello from node A", true);

  step = "Bob answers on B; Alice sees it on A";
  await b.page.fill("#text", "hi Alice, Bob on node B ✓");
  await b.page.press("#text", "Enter");
  await waitSaid(a.page, "Bob", "hi Alice, Bob on node B ✓", false);
  await waitSaid(b.page, "Bob", "hi Alice, Bob on node B ✓", true);

  step = "Carol, on node B, cannot take Alice's name";
  const c = await openAndJoin(urlB, "Alice");
  await waitText(c.page, "#join-error", "the name Alice is already taken");
  if (await c.page.isVisible("#say-form")) throw new Error("Carol's message form is visible after a refused join");

  step = "Carol joins on B under her own name; Alice sees it on A";
  await c.page.fill("#name", "Carol");
  await c.page.click("#join");
  await waitText(c.page, "#messages li.notice.join", "You joined as Carol");
  await waitText(c.page, "#count", "3 online");
  await waitUsers(c.page, ["Alice", "Bob", "Carol"]);
  await waitText(a.page, "#messages li.notice.join", "Carol joined");
  await waitText(a.page, "#count", "3 online");
  await waitUsers(a.page, ["Alice", "Bob", "Carol"]);

  if (screenshot) {
    step = "taking a screenshot";
    await a.page.screenshot({ path: screenshot });
  }

  step = "Bob closes his page; Alice (node A) and Carol (node B) see him leave";
  await b.context.close();
  for (const p of [a.page, c.page]) {
    await waitText(p, "#messages li.notice.leave", "Bob left");
    await waitText(p, "#count", "2 online");
    await waitUsers(p, ["Alice", "Carol"]);
  }

  step = "checking that each page used one WebSocket to its own node";
  checkSockets("Alice", a);
  checkSockets("Bob", b);
  checkSockets("Carol", c);

  step = "checking for page errors";
  if (pageErrors.length) throw new Error("JavaScript errors on the page:\n  " + pageErrors.join("\n  "));
}

main().then(async () => {
  await browser.close();
  console.log("chat_mesh: OK");
  process.exit(0);
}, async (err) => {
  console.error(`chat_mesh: FAIL: ${step}: ${err && err.message ? err.message : err}`);
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
});
