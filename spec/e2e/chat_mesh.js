#!/usr/bin/env node
// Browser end-to-end test of examples/chat.lua on two mesh nodes, in
// headless Chromium: one room across the nodes.
//
//   node spec/e2e/chat_mesh.js http://127.0.0.1:PORT_A/ http://127.0.0.1:PORT_B/ [--screenshot=/tmp/mesh.png]
//   node spec/e2e/chat_mesh.js --lose-name=NAME http://127.0.0.1:PORT_A/
//
// With two URLs, they are two chat nodes linked to each other
// (spec/chat_mesh_spec.lua starts them). Alice's page is served by node A
// and Bob's by node B (separate browser contexts). The steps:
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
// With --lose-name=NAME, node A has lost its link to the node where NAME
// joined a moment earlier (the spec sees to that). The page joins as NAME on
// A, alone in A's room, and prints "joined" on stdout; the spec then brings
// the link back. NAME's earlier join on the other node keeps the name, so
// the page must be told it is out of the room: the join form is back with
// NAME filled in and a message saying another node took it, the user list
// and count are empty and the message form is hidden. It joins as
// NAME + "2" on the same WebSocket and must see both names, "2 online".
//
// Exits 0 on success, 1 with a message naming the failed step otherwise,
// 2 on bad usage, 3 when the whole run exceeds the hard timeout.
"use strict";

const { chromium } = require("playwright-core");

const HARD_TIMEOUT_MS = 40000;
const STEP_TIMEOUT_MS = 8000;
// Waits that span a link coming back: the nodes redial with a backoff of up to 5 s.
const RELINK_TIMEOUT_MS = 20000;

const loseArg = process.argv[2] && process.argv[2].startsWith("--lose-name=") ? process.argv[2] : null;
const loseName = loseArg ? loseArg.slice("--lose-name=".length) : null;
const args = process.argv.slice(loseArg ? 3 : 2);
const [urlA, urlB] = loseArg ? [args[0], null] : args.slice(0, 2);
const rest = args.slice(loseArg ? 1 : 2);
const shotArg = rest.find((a) => a.startsWith("--screenshot="));
const screenshot = shotArg ? shotArg.slice("--screenshot=".length) : null;
const badArg = rest.find((a) => !/^--screenshot=./.test(a));
const isUrl = (u) => typeof u === "string" && /^http:\/\//.test(u);
if (badArg || !isUrl(urlA) || (loseArg ? !/^[A-Za-z]{1,20}$/.test(loseName) : !isUrl(urlB) || urlA === urlB)) {
  console.error("usage: node chat_mesh.js http://host:portA/ http://host:portB/ [--screenshot=file.png]\n" +
    "       node chat_mesh.js --lose-name=NAME http://host:portA/ [--screenshot=file.png]");
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
async function waitText(page, selector, text, timeout) {
  try {
    await page.waitForFunction(
      ([sel, want]) => Array.from(document.querySelectorAll(sel)).some((e) => e.textContent.trim() === want),
      [selector, text],
      { timeout: timeout || STEP_TIMEOUT_MS, polling: 50 },
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

async function expectEqual(actual, expected, what) {
  const a = JSON.stringify(await actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

// --lose-name: the page whose join loses the name when the link returns.
async function loseMain() {
  step = "launching chromium";
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    timeout: 15000,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });

  step = `${loseName} joins on node A, cut off from the other node`;
  const p = await openAndJoin(urlA, loseName);
  await waitText(p.page, "#messages li.notice.join", `You joined as ${loseName}`);
  await waitText(p.page, "#count", "1 online");
  await waitUsers(p.page, [loseName]);
  console.log("joined");

  step = "the link returns: the other node's earlier join keeps the name";
  const told = `You left the room: the name ${loseName} was taken on node b at the same time; ` +
    "join again under another name.";
  await waitText(p.page, "#messages li.notice.error", told, RELINK_TIMEOUT_MS);
  await waitText(p.page, "#join-error", `Someone on another node took the name ${loseName} at the same time. ` +
    "Pick another name to join again.");
  await expectEqual(p.page.isVisible("#join-form"), true, "the join form is visible");
  await expectEqual(p.page.isVisible("#say-form"), false, "the message form is hidden");
  await expectEqual(p.page.inputValue("#name"), loseName, "the name field");
  await expectEqual(p.page.$$eval("#users li", (els) => els.length), 0, "entries in the user list");
  await expectEqual(p.page.textContent("#count"), "", "the count");

  if (screenshot) {
    step = "taking a screenshot";
    await p.page.screenshot({ path: screenshot });
  }

  step = `joining again as ${loseName}2 on the same WebSocket`;
  await p.page.fill("#name", loseName + "2");
  await p.page.click("#join");
  await waitText(p.page, "#messages li.notice.join", `You joined as ${loseName}2`);
  await waitText(p.page, "#count", "2 online");
  await waitUsers(p.page, [loseName, loseName + "2"]);
  await expectEqual(p.page.isVisible("#say-form"), true, "the message form is visible");
  checkSockets(loseName, p);

  step = "checking for page errors";
  if (pageErrors.length) throw new Error("JavaScript errors on the page:\n  " + pageErrors.join("\n  "));
}

(loseArg ? loseMain() : main()).then(async () => {
  await browser.close();
  console.log("chat_mesh: OK");
  process.exit(0);
}, async (err) => {
  console.error(`chat_mesh: FAIL: ${step}: ${err && err.message ? err.message : err}`);
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
});
