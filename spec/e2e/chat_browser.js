#!/usr/bin/env node
// Browser end-to-end test of examples/chat.lua in headless Chromium.
//
//   node spec/e2e/chat_browser.js http://127.0.0.1:PORT/ [--screenshot=/tmp/chat.png]
//   node spec/e2e/chat_browser.js https://localhost:PORT/ --trust-spki=BASE64 [--screenshot=...]
//
// Two pages (separate browser contexts) join as Alice and Bob, talk to each
// other, check join notices, user counts and user lists; then Bob's page
// closes and Alice must see the leave notice and the count drop to 1.
//
// Over https, --trust-spki names the server certificate's key (the base64
// SHA-256 of its SubjectPublicKeyInfo), which Chromium then accepts through
// --ignore-certificate-errors-spki-list; no other certificate error is
// ignored. Every page must then have been served over TLS (Playwright's
// securityDetails) and every WebSocket it opened must be wss://; over http
// every WebSocket must be ws://.
// Exits 0 on success, 1 with a message naming the failed step otherwise,
// 2 on bad usage, 3 when the whole run exceeds the hard timeout.
"use strict";

const { chromium } = require("playwright-core");

const HARD_TIMEOUT_MS = 30000;
const STEP_TIMEOUT_MS = 8000;

const url = process.argv[2];
const shotArg = process.argv.slice(3).find((a) => a.startsWith("--screenshot="));
const screenshot = shotArg ? shotArg.slice("--screenshot=".length) : null;
const spkiArg = process.argv.slice(3).find((a) => a.startsWith("--trust-spki="));
const trustSpki = spkiArg ? spkiArg.slice("--trust-spki=".length) : null;
const badArg = process.argv.slice(3).find((a) => !/^--(screenshot|trust-spki)=./.test(a));
if (!url || !/^https?:\/\//.test(url) || badArg || (trustSpki && !/^[A-Za-z0-9+/]{43}=$/.test(trustSpki))) {
  console.error("usage: node chat_browser.js http://host:port/ [--screenshot=file.png]\n" +
    "       node chat_browser.js https://host:port/ --trust-spki=BASE64_SHA256_OF_SPKI [--screenshot=file.png]");
  process.exit(2);
}
const tls = url.startsWith("https:");
const wsScheme = tls ? "wss:" : "ws:";

let browser = null;
let step = "starting";

setTimeout(() => {
  console.error(`chat_browser: FAIL: hard timeout of ${HARD_TIMEOUT_MS / 1000} s reached during: ${step}`);
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

async function expectEqual(actual, expected, what) {
  const a = JSON.stringify(await actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

async function openAndJoin(name) {
  const context = await browser.newContext({ viewport: { width: 900, height: 560 } });
  const page = await context.newPage();
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws.url()));
  page.on("pageerror", (err) => { pageErrors.push(`${name}: ${err.message}`); });
  page.on("console", (msg) => { if (msg.type() === "error") pageErrors.push(`${name}: console: ${msg.text()}`); });
  const resp = await page.goto(url, { timeout: STEP_TIMEOUT_MS });
  if (!resp || resp.status() !== 200) throw new Error(`GET ${url} answered ${resp && resp.status()}`);
  if (tls) {
    const sec = await resp.securityDetails();
    if (!page.url().startsWith("https:") || !sec || !sec.protocol) {
      throw new Error(`the page ${page.url()} was not served over TLS (security details: ${JSON.stringify(sec)})`);
    }
  }
  await page.fill("#name", "  " + name + " ");
  await page.click("#join");
  return { context, page, sockets };
}

// Checks that the page opened exactly one WebSocket, to /ws with the scheme
// that matches the page's (wss: under https).
function checkSockets(who, p) {
  const want = `${wsScheme}//${new URL(url).host}/ws`;
  if (p.sockets.length !== 1 || p.sockets[0] !== want) {
    throw new Error(`${who}'s page opened WebSockets ${JSON.stringify(p.sockets)}; expected [${JSON.stringify(want)}]`);
  }
}

const pageErrors = [];

async function main() {
  step = "launching chromium";
  const args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"];
  if (trustSpki) args.push(`--ignore-certificate-errors-spki-list=${trustSpki}`);
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    timeout: 15000,
    args,
  });

  step = "Alice opens the page and joins";
  const a = await openAndJoin("Alice");
  await waitText(a.page, "#count", "1 online");
  await waitText(a.page, "#messages li.notice.join", "You joined as Alice");
  await expectEqual(a.page.isVisible("#say-form"), true, "Alice's message form is visible");
  await expectEqual(a.page.isVisible("#join-form"), false, "Alice's join form is hidden");

  step = "Bob opens the page and joins";
  const b = await openAndJoin("Bob");
  await waitText(b.page, "#count", "2 online");
  await waitText(b.page, "#messages li.notice.join", "You joined as Bob");

  step = "Alice sees Bob join";
  await waitText(a.page, "#messages li.notice.join", "Bob joined");
  await waitText(a.page, "#count", "2 online");
  await expectEqual(a.page.$$eval("#users li", (els) => els.map((e) => e.textContent)), ["Alice", "Bob"],
    "Alice's user list");
  await expectEqual(b.page.$$eval("#users li", (els) => els.map((e) => e.textContent)), ["Alice", "Bob"],
    "Bob's user list");
  await expectEqual(b.page.$$eval("#messages li.notice.join", (els) => els.length), 1,
    "join notices on Bob's page (only his own: Alice joined before him)");

  step = "Alice says hello; Bob sees it";
  await a.page.fill("#text", "hello from Alice <b>not bold</b>");
  await a.page.click("#send");
  await waitSaid(b.page, "Alice", "hello from Alice <b>not bold</b>", false);
  await waitSaid(a.page, "Alice", "hello from Alice <b>not bold</b>", true);
  await expectEqual(a.page.inputValue("#text"), "", "Alice's input after sending");

  step = "Bob answers with Enter; Alice sees it";
  await b.page.fill("#text", "hi Alice, Bob here ✓");
  await b.page.press("#text", "Enter");
  await waitSaid(a.page, "Bob", "hi Alice, Bob here ✓", false);
  await waitSaid(b.page, "Bob", "hi Alice, Bob here ✓", true);

  if (screenshot) {
    step = "taking a screenshot";
    await a.page.screenshot({ path: screenshot });
  }

  step = "Bob closes his page; Alice sees him leave";
  await b.context.close();
  await waitText(a.page, "#messages li.notice.leave", "Bob left");
  await waitText(a.page, "#count", "1 online");
  await expectEqual(a.page.$$eval("#users li", (els) => els.map((e) => e.textContent)), ["Alice"],
    "Alice's user list after Bob left");

  step = `checking that each page used one ${wsScheme}// WebSocket`;
  checkSockets("Alice", a);
  checkSockets("Bob", b);

  step = "checking for page errors";
  if (pageErrors.length) throw new Error("JavaScript errors on the page:\n  " + pageErrors.join("\n  "));
}

main().then(async () => {
  await browser.close();
  console.log("chat_browser: OK");
  process.exit(0);
}, async (err) => {
  console.error(`chat_browser: FAIL: ${step}: ${err && err.message ? err.message : err}`);
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
});
