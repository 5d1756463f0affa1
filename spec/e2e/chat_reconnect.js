#!/usr/bin/env node
// Browser end-to-end test of the chat page's reconnection, in headless
// Chromium, against examples/chat.lua run as a script that this test starts,
// kills and starts again on the same port.
//
//   node spec/e2e/chat_reconnect.js LUA CHAT_SCRIPT [--screenshot=/tmp/narrow.png]
//
// LUA is the interpreter (lua5.4) and CHAT_SCRIPT the path of
// examples/chat.lua; the server runs from / with this process's environment
// (LUA_PATH and LUA_CPATH must find relaynet). The steps:
//
//  1. Alice and Bob join. The server gets SIGTERM with both in the room: it
//     must exit 0, print only its banner and only INFO log lines on stderr.
//  2. Carol, whose page was loaded before, clicks Join while the server is
//     down: her page must say "Cannot reach the server, retrying in N s…".
//  3. Alice's browser goes offline (Playwright's setOffline) so that she
//     stays out; the server starts again on the same port. Bob rejoins by
//     himself ("Reconnected as Bob") and Carol joins by herself.
//  4. Alice's browser comes back online: her page rejoins as Alice by itself,
//     and Bob and Carol see "Alice joined". Alice's next message reaches Bob.
//  5. The server is killed with SIGKILL. While Alice is offline again and
//     the server is back, Mallory joins as "Alice". Alice's page must then say
//     that her name is taken, offer the join form with the name filled in,
//     and stop retrying; she joins as "Alice 2".
//  6. Bob's viewport shrinks to 360x640: the user list must be visible,
//     inside the viewport, listing everyone, and the page must not scroll
//     sideways.
//  7. SIGTERM with four users in the room: exit 0, only INFO log lines. With
//     the server left down, Bob's page must back off (2 to 4 attempts in
//     4.5 s, the second at least 0.6 s after the first).
//
// Exits 0 on success, 1 with a message naming the failed step otherwise,
// 2 on bad usage, 3 when the whole run exceeds the hard timeout.
"use strict";

const { spawn } = require("child_process");
const { chromium } = require("playwright-core");

const HARD_TIMEOUT_MS = 90000;
const STEP_TIMEOUT_MS = 8000;
// Waits that span a reconnection: the page's backoff may be a few seconds.
const RECONNECT_TIMEOUT_MS = 15000;

const [lua, script] = process.argv.slice(2, 4);
const shotArg = process.argv.slice(4).find((a) => a.startsWith("--screenshot="));
const screenshot = shotArg ? shotArg.slice("--screenshot=".length) : null;
const badArg = process.argv.slice(4).find((a) => !/^--screenshot=./.test(a));
if (!lua || !script || badArg) {
  console.error("usage: node chat_reconnect.js LUA CHAT_SCRIPT [--screenshot=file.png]");
  process.exit(2);
}

let browser = null;
let server = null;
let step = "starting";
const pageErrors = [];

setTimeout(() => {
  console.error(`chat_reconnect: FAIL: hard timeout of ${HARD_TIMEOUT_MS / 1000} s reached during: ${step}`);
  if (server) server.proc.kill("SIGKILL");
  process.exit(3);
}, HARD_TIMEOUT_MS);

// Starts the chat script on `port` (0: any free port). Resolves with
// { proc, port, out, err, exited } once its banner line is printed.
function startServer(port) {
  return new Promise((resolve, reject) => {
    // Under `make test-asan` node itself runs without the ASan runtime, but
    // the chat script loads the sanitized core: it gets the runtime back.
    const env = { ...process.env };
    if (process.env.RELAYNET_ASAN_PRELOAD) env.LD_PRELOAD = process.env.RELAYNET_ASAN_PRELOAD;
    const proc = spawn(lua, [script, String(port)], { cwd: "/", env, stdio: ["ignore", "pipe", "pipe"] });
    const s = { proc, port: null, out: "", err: "", exited: null };
    s.exited = new Promise((res) => proc.on("exit", (code, signal) => res({ code, signal })));
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`the chat script printed no banner; stdout ${JSON.stringify(s.out)}, stderr ${JSON.stringify(s.err)}`));
    }, STEP_TIMEOUT_MS);
    proc.stdout.on("data", (d) => {
      s.out += d;
      const m = /^chat room on http:\/\/localhost:(\d+)\/ \(Ctrl-C stops\)\n/.exec(s.out);
      if (m && s.port === null) {
        s.port = Number(m[1]);
        clearTimeout(timer);
        resolve(s);
      }
    });
    proc.stderr.on("data", (d) => { s.err += d; });
    s.exited.then(({ code, signal }) => {
      clearTimeout(timer);
      if (s.port === null) {
        reject(new Error(`the chat script exited (${code}, ${signal}) before its banner; stderr ${JSON.stringify(s.err)}`));
      }
    });
  });
}

// Sends `signal` and waits for the server to exit. With SIGTERM the exit
// must be quiet: status 0, stdout only the banner, stderr only INFO log
// lines.
async function stopServer(s, signal) {
  s.proc.kill(signal);
  const { code, signal: sig } = await Promise.race([
    s.exited,
    new Promise((_, rej) => setTimeout(() => rej(new Error(`the server did not exit within 10 s of ${signal}`)), 10000)),
  ]);
  if (signal === "SIGKILL") {
    if (sig !== "SIGKILL") throw new Error(`expected the server to die of SIGKILL, got ${code}, ${sig}`);
    return;
  }
  const banner = `chat room on http://localhost:${s.port}/ (Ctrl-C stops)\n`;
  // stderr: the relaynet command's INFO log lines (listening, access), and
  // nothing else: no warning, no error, no traceback.
  const quiet = s.err.split("\n").filter((l) => l !== "")
    .every((l) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO (listening on |access )/.test(l));
  if (code !== 0 || s.out !== banner || !quiet) {
    throw new Error(`after ${signal} the server exited with ${code} (${sig}); ` +
      `stdout ${JSON.stringify(s.out)}, stderr ${JSON.stringify(s.err)}`);
  }
}

// Waits until some element matching `selector` has exactly `text` (a
// string) or matching `text` (a RegExp) as its trimmed textContent, and is
// visible.
async function waitText(page, selector, text, timeout) {
  const want = text instanceof RegExp ? { re: text.source } : { eq: text };
  try {
    await page.waitForFunction(
      ([sel, w]) => Array.from(document.querySelectorAll(sel)).some((e) => {
        const t = e.textContent.trim();
        const ok = w.re !== undefined ? new RegExp(w.re).test(t) : t === w.eq;
        return ok && e.getClientRects().length > 0;
      }),
      [selector, want],
      { timeout: timeout || STEP_TIMEOUT_MS, polling: 50 },
    );
  } catch (e) {
    const seen = await page.$$eval(selector, (els) => els.map((e) => e.textContent.trim())).catch(() => []);
    throw new Error(`no visible ${selector} with text ${text}; found ${JSON.stringify(seen)}`);
  }
}

async function waitUsers(page, names, timeout) {
  try {
    await page.waitForFunction(
      (want) => JSON.stringify(Array.from(document.querySelectorAll("#users li")).map((e) => e.textContent)) === want,
      JSON.stringify(names),
      { timeout: timeout || STEP_TIMEOUT_MS, polling: 50 },
    );
  } catch (e) {
    const seen = await page.$$eval("#users li", (els) => els.map((e) => e.textContent)).catch(() => []);
    throw new Error(`user list: expected ${JSON.stringify(names)}, found ${JSON.stringify(seen)}`);
  }
}

async function expectEqual(actual, expected, what) {
  const a = JSON.stringify(await actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

const texts = (page, selector) => page.$$eval(selector, (els) => els.map((e) => e.textContent.trim()));

async function openPage(name, url) {
  const context = await browser.newContext({ viewport: { width: 900, height: 560 } });
  const page = await context.newPage();
  page.on("pageerror", (err) => { pageErrors.push(`${name}: ${err.message}`); });
  page.on("console", (msg) => {
    // Chromium logs every failed WebSocket handshake; while the server is
    // down those are the point of the test.
    if (msg.type() === "error" && !/^WebSocket connection to .* failed/.test(msg.text())) {
      pageErrors.push(`${name}: console: ${msg.text()}`);
    }
  });
  const resp = await page.goto(url, { timeout: STEP_TIMEOUT_MS });
  if (!resp || resp.status() !== 200) throw new Error(`GET ${url} answered ${resp && resp.status()}`);
  return { context, page };
}

async function join(p, name) {
  await p.page.fill("#name", name);
  await p.page.click("#join");
}

async function main() {
  step = "starting the chat server";
  server = await startServer(0);
  const port = server.port;
  const url = `http://127.0.0.1:${port}/`;

  step = "launching chromium";
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    timeout: 15000,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });

  step = "Alice and Bob join; Carol opens the page without joining";
  const a = await openPage("Alice", url);
  await join(a, "Alice");
  await waitText(a.page, "#messages li.notice.join", "You joined as Alice");
  const b = await openPage("Bob", url);
  await join(b, "Bob");
  await waitText(b.page, "#messages li.notice.join", "You joined as Bob");
  await waitUsers(a.page, ["Alice", "Bob"]);
  const c = await openPage("Carol", url);
  await expectEqual(c.page.isVisible("#banner"), false, "Carol's banner before anything happened");

  step = "SIGTERM with Alice and Bob in the room: a quiet exit 0";
  await stopServer(server, "SIGTERM");
  server = null;

  step = "Alice and Bob see the connection lost, and the page retrying";
  for (const p of [a, b]) {
    await waitText(p.page, "#messages li.notice.error", "Lost the connection to the server. Reconnecting…");
    await waitText(p.page, "#status", "reconnecting…");
    await waitText(p.page, "#banner", /^(Lost the connection to|Cannot reach) the server, retrying in \d+ s…/);
    await expectEqual(p.page.isDisabled("#text"), true, "the message box while reconnecting");
  }
  await a.context.setOffline(true);

  step = "Carol joins while the server is down and is told so";
  await join(c, "Carol");
  await waitText(c.page, "#banner", /^Cannot reach the server, retrying in \d+ s…/);
  await expectEqual(c.page.isVisible("#join-form"), true, "Carol's join form while the server is down");
  await waitText(c.page, "#status", "reconnecting…");
  await waitText(b.page, "#banner", /^Cannot reach the server, retrying in \d+ s…/, RECONNECT_TIMEOUT_MS);

  step = "the server starts again on the same port; Bob rejoins and Carol joins by themselves";
  server = await startServer(port);
  await waitText(b.page, "#messages li.notice.join", "Reconnected as Bob", RECONNECT_TIMEOUT_MS);
  await waitText(c.page, "#messages li.notice.join", "You joined as Carol", RECONNECT_TIMEOUT_MS);
  await waitUsers(b.page, ["Bob", "Carol"]);
  await waitUsers(c.page, ["Bob", "Carol"]);
  for (const p of [b, c]) {
    await waitText(p.page, "#status", "connected");
    await expectEqual(p.page.isVisible("#banner"), false, "the banner once back in the room");
    await expectEqual(p.page.isVisible("#say-form"), true, "the message form once back in the room");
    await expectEqual(p.page.isEnabled("#text"), true, "the message box once back in the room");
  }

  step = "Alice comes back online; her page rejoins as Alice and the others see her join";
  await a.context.setOffline(false);
  await waitText(a.page, "#messages li.notice.join", "Reconnected as Alice", RECONNECT_TIMEOUT_MS);
  await waitUsers(a.page, ["Alice", "Bob", "Carol"]);
  await waitText(b.page, "#messages li.notice.join", "Alice joined");
  await waitText(c.page, "#messages li.notice.join", "Alice joined");
  await waitUsers(b.page, ["Alice", "Bob", "Carol"]);
  // Whether Bob sees "Carol joined" depends on who of the two came back first.
  await expectEqual(texts(b.page, "#messages li.notice.join").then((l) => l.filter((t) => t !== "Carol joined")),
    ["You joined as Bob", "Reconnected as Bob", "Alice joined"], "Bob's join notices");
  await expectEqual(a.page.isVisible("#banner"), false, "Alice's banner once back");

  step = "Alice's message after the restart reaches Bob";
  await a.page.fill("#text", "back again");
  await a.page.press("#text", "Enter");
  await waitText(b.page, "#messages li.msg .text", "back again");

  step = "SIGKILL; Mallory takes the name Alice while Alice is offline";
  await stopServer(server, "SIGKILL");
  server = null;
  await a.context.setOffline(true);
  await waitText(b.page, "#banner", /^Cannot reach the server, retrying in \d+ s…/, RECONNECT_TIMEOUT_MS);
  server = await startServer(port);
  await waitUsers(b.page, ["Bob", "Carol"], RECONNECT_TIMEOUT_MS);
  const m = await openPage("Mallory", url);
  await join(m, "Alice");
  await waitText(m.page, "#messages li.notice.join", "You joined as Alice");

  step = "Alice comes back: her page says the name is taken and stops retrying";
  await a.context.setOffline(false);
  const takenMsg = "Someone else joined as Alice while you were disconnected. Pick another name to rejoin.";
  await waitText(a.page, "#join-error", takenMsg, RECONNECT_TIMEOUT_MS);
  await waitText(a.page, "#messages li.notice.error", "Could not rejoin as Alice: the name is taken now.");
  await expectEqual(a.page.isVisible("#join-form"), true, "Alice's join form after the refusal");
  await expectEqual(a.page.isVisible("#say-form"), false, "Alice's message form after the refusal");
  await expectEqual(a.page.inputValue("#name"), "Alice", "the name field after the refusal");
  await waitText(a.page, "#status", "connected");
  await new Promise((r) => setTimeout(r, 1500));
  await expectEqual(a.page.isVisible("#banner"), false, "Alice's banner 1.5 s after the refusal");
  await expectEqual(texts(a.page, "#join-error"), [takenMsg], "Alice's join error 1.5 s after the refusal");
  await expectEqual(texts(b.page, "#users li"), ["Alice", "Bob", "Carol"], "Bob's user list (Mallory is Alice)");
  await join(a, "Alice 2");
  await waitText(a.page, "#messages li.notice.join", "You joined as Alice 2");
  await waitText(b.page, "#messages li.notice.join", "Alice 2 joined");
  await waitUsers(b.page, ["Alice", "Alice 2", "Bob", "Carol"]);

  step = "at 360x640 the user list is visible above the messages";
  await b.page.setViewportSize({ width: 360, height: 640 });
  await expectEqual(b.page.isVisible("#users"), true, "the user list at 360 px");
  await expectEqual(b.page.isVisible("#messages"), true, "the messages at 360 px");
  await expectEqual(b.page.isVisible("#text"), true, "the message box at 360 px");
  const layout = await b.page.evaluate(() => {
    const box = (sel) => { const r = document.querySelector(sel).getBoundingClientRect(); return r; };
    const users = Array.from(document.querySelectorAll("#users li")).map((li) => {
      const r = li.getBoundingClientRect();
      return { text: li.textContent, left: r.left, right: r.right, top: r.top, bottom: r.bottom };
    });
    return {
      users,
      aside: box("aside"), messages: box("#messages"), form: box("#say-form"),
      scrollWidth: document.documentElement.scrollWidth,
    };
  });
  for (const u of layout.users) {
    if (u.left < 0 || u.right > 360 || u.top < 0 || u.bottom > 640 || u.right - u.left < 20) {
      throw new Error(`user ${u.text} is outside the 360x640 viewport: ${JSON.stringify(u)}`);
    }
  }
  if (layout.aside.bottom > layout.messages.top) {
    throw new Error(`the user list overlaps the messages: ${JSON.stringify(layout)}`);
  }
  if (layout.form.bottom > 640 || layout.messages.bottom - layout.messages.top < 150) {
    throw new Error(`the messages or the message box do not fit: ${JSON.stringify(layout)}`);
  }
  if (layout.scrollWidth > 360) throw new Error(`the page scrolls sideways: scrollWidth ${layout.scrollWidth}`);
  if (screenshot) await b.page.screenshot({ path: screenshot });

  step = "SIGTERM with four users in the room: a quiet exit 0";
  const attempts = [];
  b.page.on("websocket", () => attempts.push(Date.now()));
  await stopServer(server, "SIGTERM");
  server = null;
  const down = Date.now();

  step = "with the server down, Bob's page backs off";
  // Delays of 0.5, 1, 2, 4 s, each times 0.75 to 1.25: attempts start
  // between 0.375 and 0.625 s after the loss, then 1.125 to 1.875 s, then
  // 2.625 to 4.375 s. A page retrying every 0.5 s would make 9 in 4.5 s.
  await new Promise((r) => setTimeout(r, 4500));
  const gaps = attempts.map((t, i) => t - (i ? attempts[i - 1] : down));
  if (attempts.length < 2 || attempts.length > 4 || gaps[1] < 600) {
    throw new Error(`${attempts.length} connection attempts in 4.5 s, ms apart: ${JSON.stringify(gaps)}`);
  }
  await waitText(b.page, "#banner", /^Cannot reach the server, retrying in \d+ s…/);

  step = "checking for page errors";
  if (pageErrors.length) throw new Error("JavaScript errors on the page:\n  " + pageErrors.join("\n  "));
}

main().then(async () => {
  await browser.close();
  console.log("chat_reconnect: OK");
  process.exit(0);
}, async (err) => {
  console.error(`chat_reconnect: FAIL: ${step}: ${err && err.message ? err.message : err}`);
  if (server) server.proc.kill("SIGKILL");
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
});
