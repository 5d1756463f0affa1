-- examples/chat.lua: the JSON protocol over relaynet's own client, the page
-- over HTTP, two headless Chromium pages (spec/e2e/chat_browser.js) over
-- http and ws and over https and wss, the page reconnecting across server
-- restarts (spec/e2e/chat_reconnect.js), and the file run as a script.

local rn = require("relaynet")
local json = require("relaynet.json")
local H = require("helper")
local T = require("tls_files")

local chat = dofile(H.ROOT .. "/examples/chat.lua")

local function start()
  local srv = assert(chat.start(0, "127.0.0.1"))
  return srv, "ws://127.0.0.1:" .. srv.port .. "/ws"
end

-- Starts the chat script with sh, waits for its banner line (naming
-- `scheme`, default http), returns the handle and the port it printed.
local function spawn(cmd, scheme)
  local h = H.sh(cmd)
  for _ = 1, 500 do
    local f = io.open(h.base .. ".out")
    local banner = f and f:read("a") or ""
    if f then f:close() end
    local port = banner:match("^chat room on " .. (scheme or "http") .. "://localhost:(%d+)/ %(Ctrl%-C stops%)\n$")
    if port then return h, port end
    rn.sleep(0.02)
  end
  h:kill()
  error("the chat script printed no banner: " .. cmd)
end

-- The next message on client c, decoded.
local function recv(c)
  local msg, err = c:receive(5)
  assert(msg, "no message: " .. tostring(err))
  return json.decode(msg)
end

local function say(c, t)
  assert(c:send(json.encode(t)))
end

-- Connects and joins as name; returns the client and the welcome message.
-- The joiner's own "joined" notice is checked and consumed too.
local function join(url, name)
  local c = assert(rn.ws_connect(url))
  say(c, { type = "join", name = name })
  local welcome = recv(c)
  local joined = recv(c)
  assert.are.same({ type = "joined", name = welcome.name, count = welcome.count }, joined)
  return c, welcome
end

-- Sends raw data and expects exactly this error message back.
local function expect_error(c, data, message, binary)
  assert(c:send(data, binary))
  assert.are.same({ type = "error", message = message }, recv(c))
end

describe("examples/chat.lua", function()
  it("returns the module with a start function when loaded as a file", function()
    assert.is_function(chat.start)
    assert.are.equal(H.ROOT .. "/examples/chat", chat.page_dir())
  end)

  describe("protocol", function()
    it("welcomes, announces joins, relays messages to everyone and announces leaving", function()
      H.run(function()
        local _, url = start()
        local a, wa = join(url, "Alice")
        assert.are.same({ type = "welcome", name = "Alice", count = 1, names = { "Alice" } }, wa)

        local b, wb = join(url, "Bob")
        assert.are.same({ type = "welcome", name = "Bob", count = 2, names = { "Alice", "Bob" } }, wb)
        assert.are.same({ type = "joined", name = "Bob", count = 2 }, recv(a))

        local t0 = os.time()
        say(a, { type = "say", text = "hello Bob" })
        for _, c in ipairs({ a, b }) do
          local m = recv(c)
          assert.are.equal("said", m.type)
          assert.are.equal("Alice", m.name)
          assert.are.equal("hello Bob", m.text)
          assert.is_true(m.ts == math.floor(m.ts) and m.ts >= t0 and m.ts <= os.time(), "ts " .. tostring(m.ts))
        end

        say(b, { type = "say", text = "  hi Alice,\nBob here \u{2713}  " })
        for _, c in ipairs({ a, b }) do
          local m = recv(c)
          assert.are.same({ type = "said", name = "Bob", text = "hi Alice,\nBob here \u{2713}", ts = m.ts }, m)
        end

        assert.are.same({ 1000, "" }, { b:close_wait() })
        assert.are.same({ type = "left", name = "Bob", count = 1 }, recv(a))
        a:close_wait()
      end)
    end)

    it("trims names, counts characters (not bytes) and keeps names unique", function()
      H.run(function()
        local _, url = start()
        local a, wa = join(url, "  \tAnn Lee \n")
        assert.are.equal("Ann Lee", wa.name)
        local max = string.rep("\u{e9}", 32) -- 32 characters, 64 bytes
        local b, wb = join(url, max)
        assert.are.same({ type = "welcome", name = max, count = 2, names = { "Ann Lee", max } }, wb)
        assert.are.same({ type = "joined", name = max, count = 2 }, recv(a))

        local c = assert(rn.ws_connect(url))
        expect_error(c, json.encode({ type = "join", name = "Ann Lee" }), "the name Ann Lee is already taken")
        expect_error(c, json.encode({ type = "join", name = "" }), "name is empty")
        expect_error(c, json.encode({ type = "join", name = " \t " }), "name is empty")
        expect_error(c, json.encode({ type = "join", name = string.rep("x", 33) }), "name is longer than 32 characters")
        expect_error(c, json.encode({ type = "join", name = "a\tb" }), "name contains control characters")
        expect_error(c, json.encode({ type = "join", name = 42 }), "name must be a string")
        expect_error(c, '{"type":"join","name":null}', "name must be a string")
        expect_error(c, '{"type":"join"}', "name must be a string")
        expect_error(a, json.encode({ type = "join", name = "Other" }), "you have already joined as Ann Lee")

        -- the name is free again once its owner leaves
        b:close_wait()
        assert.are.same({ type = "left", name = max, count = 1 }, recv(a))
        say(c, { type = "join", name = max })
        assert.are.same({ type = "welcome", name = max, count = 2, names = { "Ann Lee", max } }, recv(c))
        a:close_wait()
        c:close_wait()
      end)
    end)

    it("answers bad input with an error and keeps the connection working", function()
      H.run(function()
        local _, url = start()
        local c = assert(rn.ws_connect(url))
        expect_error(c, "not json", "messages must be JSON objects")
        expect_error(c, "{\"type\":", "messages must be JSON objects")
        expect_error(c, "[1,2,3]", "messages need a string \"type\"")
        expect_error(c, "\"join\"", "messages must be JSON objects")
        expect_error(c, "null", "messages must be JSON objects")
        expect_error(c, string.rep("[", 5000), "messages must be JSON objects")
        expect_error(c, "{}", "messages need a string \"type\"")
        expect_error(c, '{"type":7}', "messages need a string \"type\"")
        expect_error(c, '{"type":"dance"}', "unknown message type: dance")
        expect_error(c, '{"type":"join","name":"x"}', "binary messages are not supported", true)
        expect_error(c, '{"type":"say","text":"early"}', "join before you say something")

        say(c, { type = "join", name = "Carol" })
        assert.are.same({ type = "welcome", name = "Carol", count = 1, names = { "Carol" } }, recv(c))
        assert.are.same({ type = "joined", name = "Carol", count = 1 }, recv(c))

        expect_error(c, json.encode({ type = "say", text = "" }), "text is empty")
        expect_error(c, json.encode({ type = "say", text = " \n " }), "text is empty")
        expect_error(c, json.encode({ type = "say", text = string.rep("y", 2001) }),
          "text is longer than 2000 characters")
        expect_error(c, json.encode({ type = "say", text = "bell\7" }), "text contains control characters")
        expect_error(c, '{"type":"say","text":"nul\\u0000"}', "text contains control characters")
        expect_error(c, '{"type":"say","text":["no"]}', "text must be a string")
        expect_error(c, "{broken", "messages must be JSON objects")

        local longest = string.rep("\u{1F600}", 2000) -- 2000 characters, 8000 bytes
        say(c, { type = "say", text = longest })
        local m = recv(c)
        assert.are.equal("said", m.type)
        assert.is_true(m.text == longest, "the 2000-character text came back changed")
        c:close_wait()
      end)
    end)

    it("sends chat traffic only to connections that have joined", function()
      H.run(function()
        local _, url = start()
        local lurker = assert(rn.ws_connect(url))
        local a = join(url, "Alice")
        say(a, { type = "say", text = "anyone?" })
        assert.are.equal("anyone?", recv(a).text)
        -- Had the lurker been sent the join or the message, they would be
        -- queued ahead of the answer to this request.
        expect_error(lurker, "?", "messages must be JSON objects")
        lurker:close_wait()
        a:close_wait()
      end)
    end)

    it("does not announce connections that leave without joining", function()
      H.run(function()
        local _, url = start()
        local a = join(url, "Alice")
        local b = assert(rn.ws_connect(url))
        b:close_wait()
        local c = join(url, "Carol")
        assert.are.same({ type = "joined", name = "Carol", count = 2 }, recv(a))
        c:close_wait()
        assert.are.same({ type = "left", name = "Carol", count = 1 }, recv(a))
        a:close_wait()
      end)
    end)

    it("closes the room quietly: server:close() with people in it reports no handler error", function()
      H.run(function()
        local srv, url = start()
        local a = join(url, "Alice")
        local b = join(url, "Bob")
        assert.are.same({ type = "joined", name = "Bob", count = 2 }, recv(a))
        -- The close handlers tell the others "left" while every connection is
        -- closing: those sends fail (ECLOSED, ENOTCONN) instead of raising,
        -- so H.run sees no handler error.
        assert.is_true(srv:close())
        for _, c in ipairs({ a, b }) do
          local msg, err
          repeat msg, err = c:receive(5) until not msg
          assert.are.equal("ECLOSED: connection closed (1001 server closing)", err)
        end
      end)
    end)

    it("closes WebSockets opened on another path with 1008", function()
      H.run(function()
        local srv = start()
        local c = assert(rn.ws_connect("ws://127.0.0.1:" .. srv.port .. "/chat"))
        local msg, err, code = c:receive(5)
        assert.is_nil(msg)
        assert.are.equal("ECLOSED: connection closed (1008 WebSockets live at /ws)", err)
        assert.are.equal("ECLOSED", code)
      end)
    end)
  end)

  describe("HTTP", function()
    it("serves the page at / and /index.html and answers plain GET /ws with 426", function()
      H.run(function()
        local srv = start()
        local f = assert(io.open(H.ROOT .. "/examples/chat/index.html", "rb"))
        local page = f:read("a")
        f:close()
        local base = "http://127.0.0.1:" .. srv.port
        for _, path in ipairs({ "/", "/index.html" }) do
          local status, body = H.curl(H.q(base .. path))
          assert.are.equal(200, status)
          assert.is_true(body == page, path .. " did not serve examples/chat/index.html")
        end
        local status, body = H.curl("-D - " .. H.q(base .. "/"))
        assert.are.equal(200, status)
        assert.matches("\r\ncontent%-type: text/html; charset=utf%-8\r\n", body:lower())
        status, body = H.curl(H.q(base .. "/ws"))
        assert.are.equal(426, status)
        assert.are.equal("this address takes WebSocket connections\n", body)
        status, body = H.curl(H.q(base .. "/missing.js"))
        assert.are.equal(404, status)
        assert.are.equal("not found\n", body)
      end)
    end)

    it("keeps the page self-contained: no external scripts, styles or images", function()
      local f = assert(io.open(H.ROOT .. "/examples/chat/index.html", "rb"))
      local page = f:read("a")
      f:close()
      assert.is_nil(page:find("https?://"))
      assert.is_nil(page:find("<script[^>]-src="))
      assert.is_nil(page:find("<link[^>]-stylesheet"))
      assert.is_nil(page:find("<img"))
    end)
  end)

  describe("in a browser", function()
    it("lets two headless Chromium pages chat (spec/e2e/chat_browser.js)", function()
      H.run(function()
        local srv = start()
        local cmd = "node " .. H.q(H.ROOT .. "/spec/e2e/chat_browser.js") .. " " ..
          H.q("http://127.0.0.1:" .. srv.port .. "/")
        local rc, out, err = H.sh(cmd):wait(45)
        assert.are.equal(0, rc, "chat_browser.js failed:\n" .. out .. err)
        assert.are.equal("chat_browser: OK\n", out)
      end, { timeout = 60 })
    end)

    it("lets them chat over https and wss, the server's key trusted by its SPKI hash", function()
      local F = T.make()
      finally(function() T.remove() end)
      H.run(function()
        -- The base64 SHA-256 of the certificate's SubjectPublicKeyInfo, for
        -- Chromium's --ignore-certificate-errors-spki-list.
        local rc, spki, err = H.sh("openssl x509 -in " .. H.q(F.cert) .. " -pubkey -noout"
          .. " | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64"):wait(10)
        assert.are.equal(0, rc, err)
        spki = spki:gsub("%s+$", "")
        assert.matches("^[%w+/]+=$", spki)

        local h, port = spawn("cd / && exec lua5.4 " .. H.q(H.ROOT .. "/bin/relaynet") .. " "
          .. H.q(H.ROOT .. "/examples/chat.lua") .. " 0 --tls-cert " .. H.q(F.cert)
          .. " --tls-key " .. H.q(F.key), "https")
        local ok, res = pcall(function()
          local base = "https://localhost:" .. port .. "/"
          -- TLS is really what the port speaks: https verifies against the
          -- test CA and plain http is not served.
          local status, body = H.curl("--cacert " .. H.q(F.ca) .. " " .. H.q(base))
          assert.are.equal(200, status)
          assert.matches("<title>relaynet chat</title>", body, 1, true)
          assert.are_not.equal(200, (H.curl(H.q("http://localhost:" .. port .. "/"))))

          local cmd = "node " .. H.q(H.ROOT .. "/spec/e2e/chat_browser.js") .. " " .. H.q(base)
            .. " --trust-spki=" .. H.q(spki)
          local brc, out, berr = H.sh(cmd):wait(45)
          assert.are.equal(0, brc, "chat_browser.js failed:\n" .. out .. berr)
          assert.are.equal("chat_browser: OK\n", out)

          -- Without the key's hash the browser refuses the certificate.
          brc, out, berr = H.sh("node " .. H.q(H.ROOT .. "/spec/e2e/chat_browser.js") .. " " .. H.q(base)):wait(45)
          assert.are.equal(1, brc, out .. berr)
          assert.matches("ERR_CERT_AUTHORITY_INVALID", berr, 1, true)
        end)
        os.execute("pkill -TERM -P " .. h.pid)
        local src = h:wait(15)
        assert(ok, res)
        assert.are.equal(0, src)
      end, { timeout = 120 })
    end)
  end)

  describe("reconnecting in a browser", function()
    it("rejoins by itself after restarts, says when the server cannot be reached, " ..
      "keeps the user list on a narrow screen (spec/e2e/chat_reconnect.js)", function()
      H.run(function()
        -- The script starts, kills and restarts examples/chat.lua itself, on
        -- the port the first run printed.
        local cmd = "node " .. H.q(H.ROOT .. "/spec/e2e/chat_reconnect.js") .. " lua5.4 "
          .. H.q(H.ROOT .. "/examples/chat.lua")
        local rc, out, err = H.sh(cmd):wait(100)
        assert.are.equal(0, rc, "chat_reconnect.js failed:\n" .. out .. err)
        assert.are.equal("chat_reconnect: OK\n", out)
      end, { timeout = 110 })
    end)
  end)

  describe("as a script", function()
    it("serves the page from any working directory and stops cleanly on SIGTERM", function()
      H.run(function()
        local h, port = spawn("cd / && exec lua5.4 " .. H.q(H.ROOT .. "/examples/chat.lua") .. " 0")
        local status, body = H.curl(H.q("http://127.0.0.1:" .. port .. "/"))
        assert.are.equal(200, status)
        assert.matches("<title>relaynet chat</title>", body, 1, true)
        os.execute("pkill -TERM -P " .. h.pid)
        local rc, out, err = h:wait(15)
        assert.are.equal(0, rc)
        assert.are.equal("chat room on http://localhost:" .. port .. "/ (Ctrl-C stops)\n", out)
        local log = H.assert_info_only(err)
        assert.are.equal("listening on http://0.0.0.0:" .. port, log[1])
        assert.are.equal(2, #log)
        assert.matches("^access http peer=%S+ method=GET path=/ status=200 ", log[2])
      end, { timeout = 30 })
    end)

    it("stops quietly on SIGINT with two people in the room: exit 0, info lines only", function()
      H.run(function()
        local h, port = spawn("cd / && exec lua5.4 " .. H.q(H.ROOT .. "/examples/chat.lua") .. " 0")
        local url = "ws://127.0.0.1:" .. port .. "/ws"
        local a = join(url, "Alice")
        local b = join(url, "Bob")
        assert.are.same({ type = "joined", name = "Bob", count = 2 }, recv(a))
        os.execute("pkill -INT -P " .. h.pid)
        for _, c in ipairs({ a, b }) do
          local msg, err
          repeat msg, err = c:receive(5) until not msg
          assert.are.equal("ECLOSED: connection closed (1001 server closing)", err)
        end
        local rc, out, err = h:wait(15)
        assert.are.equal(0, rc)
        assert.are.equal("chat room on http://localhost:" .. port .. "/ (Ctrl-C stops)\n", out)
        -- the access log's line per WebSocket, and nothing else
        local log = H.assert_info_only(err)
        assert.are.equal(3, #log, err)
        for i = 2, 3 do assert.matches("^access ws peer=%S+ path=/ws ms=%S+ in=1 out=%d code=1001$", log[i]) end
      end, { timeout = 30 })
    end)

    it("takes the page folder from RELAYNET_CHAT_DIR", function()
      H.run(function()
        local dir = os.tmpname()
        os.remove(dir)
        assert(os.execute("mkdir " .. H.q(dir)))
        local f = assert(io.open(dir .. "/index.html", "w"))
        f:write("custom page\n")
        f:close()
        local h, port = spawn("cd / && RELAYNET_CHAT_DIR=" .. H.q(dir) .. " exec lua5.4 " ..
          H.q(H.ROOT .. "/examples/chat.lua") .. " 0")
        local status, body = H.curl(H.q("http://127.0.0.1:" .. port .. "/"))
        os.execute("pkill -TERM -P " .. h.pid)
        assert.are.equal(0, (h:wait(15)))
        os.remove(dir .. "/index.html")
        os.remove(dir)
        assert.are.equal(200, status)
        assert.are.equal("custom page\n", body)
      end, { timeout = 30 })
    end)

    it("refuses to start without the page, naming the file it looked for", function()
      H.run(function()
        local rc, out, err = H.sh("RELAYNET_CHAT_DIR=/nonexistent lua5.4 " ..
          H.q(H.ROOT .. "/examples/chat.lua") .. " 0"):wait(10)
        assert.are.equal(1, rc)
        assert.are.equal("", out)
        assert.are.equal("chat: cannot find /nonexistent/index.html " ..
          "(set RELAYNET_CHAT_DIR to the folder holding index.html)\n", err)
      end)
    end)
  end)
end)
