-- spec/mesh_auth_spec.lua: the authenticated mesh (protocol version 2,
-- docs/PROTOCOL.md "Authentication"; README "Securing the mesh") with real
-- node processes (spec/support/mesh_harness.lua), over wss with a private
-- CA (spec/support/tls_files.lua) where TLS matters.
--
-- The attackers are this test process speaking the link protocol by hand
-- (spec/support/mesh_peer.lua: hellos, proofs and envelopes of its choice)
-- and relaynet processes with missing or wrong credentials. Every refusal
-- is checked by its exact close code (or error) and by the counter the
-- refusing node shows in GET /status.

local H = require("helper")
local MH = require("mesh_harness")
local T = require("tls_files")
local P = require("mesh_peer")
local rn = require("relaynet")
local core = require("relaynet.core")
local json = require("relaynet.json")

local ACCESS = H.ROOT .. "/spec/support/access_counter.lua"
local TTL_COUNTER = H.ROOT .. "/spec/support/ttl_counter.lua"

local F       -- the TLS files
local DIR     -- a temporary directory for keys, trust and secret files
local K = {}  -- name -> { file, priv, pub, b64, id (derived) }
local TRUST   -- trust file naming n1..n4 and m5
local SECRET, WRONG_SECRET

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  os.execute("chmod 600 " .. H.q(path))
end

local function key(name)
  local priv, pub = core.ed25519_keygen()
  local file = DIR .. "/" .. name .. ".key"
  assert(core.key_write(file, priv))
  K[name] = { file = file, priv = priv, pub = pub, b64 = core.b64encode(pub), id = rn.key_node_id(pub) }
  return K[name]
end

local function stats(m, id)
  return assert(m:status(id), "no /status from " .. id).stats
end

-- Waits until node `id`'s counter `name` has grown by at least `by` over
-- `before` (a stats table); returns the new stats.
local function grew(m, id, before, name, by)
  local st
  MH.wait_until(function()
    st = stats(m, id)
    return st[name] - before[name] >= (by or 1)
  end, id .. "'s " .. name .. " to grow by " .. (by or 1), 10,
    function() return name .. " = " .. tostring(st and st[name]) .. ", was " .. before[name] end)
  return st
end

local function peer_ids(m, id)
  local out = {}
  for _, p in ipairs(assert(m:status(id)).peers) do out[p.id] = p end
  return out
end

-- Starts nodes at once: list = { { id, peers = {...}, args = {...}, script = ... } }.
local function start_nodes(m, list)
  for _, n in ipairs(list) do m:port_of(n[1]) end
  for _, n in ipairs(list) do
    m:start(n[1], { peers = n.peers or {}, args = n.args or {}, script = n.script, wait = false })
  end
  for _, n in ipairs(list) do m:wait_up(n[1]) end
end

-- The arguments of a node with key `name` and the trust file.
local function keyed(name, extra)
  local a = { "--node-key", K[name].file, "--trust", TRUST }
  for _, x in ipairs(extra or {}) do a[#a + 1] = x end
  return a
end

-- A keyed line n1 - n2 - ... over wss.
local function keyed_line(m, ids)
  m.tls = { cert = F.cert, key = F.key, ca = F.ca }
  local list = {}
  for i, id in ipairs(ids) do list[i] = { id, peers = i > 1 and { ids[i - 1] } or {}, args = keyed(id) } end
  start_nodes(m, list)
  m:wait_converged(30)
end

local function server_list(m, id, node)
  local st, reg = m:get(id, "/registry")
  assert.equal(200, st)
  local names = {}
  for _, e in ipairs(reg) do
    if e.node == node then names[#names + 1] = e.server end
  end
  table.sort(names)
  return names
end

describe("mesh authentication", function()
  setup(function()
    F = T.make()
    local p = io.popen("mktemp -d /tmp/rn-auth-XXXXXX")
    DIR = p:read("l")
    p:close()
    local lines = { "# node ids and their public keys" }
    for _, name in ipairs({ "n1", "n2", "n3", "n4", "m5" }) do
      key(name)
      lines[#lines + 1] = name .. " " .. K[name].b64
    end
    key("evil")
    TRUST = DIR .. "/trust"
    write(TRUST, table.concat(lines, "\n") .. "\n")
    SECRET, WRONG_SECRET = DIR .. "/secret", DIR .. "/wrong-secret"
    write(SECRET, "correct horse battery staple 42\n")
    write(WRONG_SECRET, "an entirely different secret!!\n")
  end)
  teardown(function()
    T.remove()
    if DIR then os.execute("rm -rf " .. H.q(DIR)) end
  end)

  it("links four keyed nodes over wss; calls cross three hops; entries are signed and verified", function()
    MH.run(function(m)
      keyed_line(m, { "n1", "n2", "n3", "n4" })
      assert.equal(1, m:call_via("n1", "n4", "counter", "increment", {}))
      assert.equal(2, m:call_via("n4", "n4", "counter", "increment", {}))
      assert.equal("n1", m:call_via("n4", "n1", "counter", "whoami", {}))
      local st = assert(m:status("n4"))
      assert.equal(2, st.version)
      assert.equal("key", st.auth)
      assert.equal(K.n4.b64, st.public_key)
      assert.equal(1, st.stats.auth_ok)
      -- n1 verified the entries of n2, n3 and n4 (once each, unless one
      -- was signed again while the mesh formed)
      local s1 = stats(m, "n1")
      assert.is_true(s1.entries_verified >= 3 and s1.entries_verified <= 6, tostring(s1.entries_verified))
      assert.equal(0, s1.entries_unsigned + s1.entries_bad_signature + s1.entries_expired + s1.entries_untrusted)
      assert.same({ "counter", "counter_server" }, server_list(m, "n1", "n4"))
    end, { timeout = 90 })
  end)

  it("refuses outsiders: no credentials, an untrusted or wrong key, a forged proof, a replay, early frames",
    function()
    MH.run(function(m)
      keyed_line(m, { "n1", "n2", "n3" })
      local since = peer_ids(m, "n1").n2.since
      local before = stats(m, "n1")
      local url = m:url("n1")

      -- a version 1 peer (no credentials): 4426
      local p = P.connect(url, { id = "plain", ca = F.ca })
      p:send({ type = "hello", id = "plain-1", from = "plain", data = { version = 1, node = "plain" } })
      assert.equal(4426, (p:wait_closed()))
      before = grew(m, "n1", before, "auth_required")

      -- a relaynet process with a valid TLS setup but no key, dialing n1
      start_nodes(m, { { "plain", peers = { "n1" } } })
      before = grew(m, "n1", before, "auth_required")
      MH.wait_until(function() return m:stderr("plain"):find("4426", 1, true) end, "plain to log 4426")
      assert.is_nil(peer_ids(m, "n1").plain)
      m:stop("plain")

      -- a key that is not in the trust file, under its own derived id: 4403
      p = P.connect(url, { id = K.evil.id, priv = K.evil.priv, pub = K.evil.pub, ca = F.ca })
      p:hello()
      assert.equal(4403, (p:wait_closed()))
      before = grew(m, "n1", before, "auth_untrusted")

      -- its key claiming the trusted id n2: 4403
      p = P.connect(url, { id = "n2", priv = K.evil.priv, pub = K.evil.pub, ca = F.ca })
      p:hello()
      assert.equal(4403, (p:wait_closed()))
      before = grew(m, "n1", before, "auth_untrusted")

      -- a relaynet process with its own key, not in the trust file: 4403
      start_nodes(m, { { "evil", peers = { "n1" }, args = { "--node-key", K.evil.file } } })
      MH.wait_until(function() return m:stderr("evil"):find("4403", 1, true) end, "evil to log 4403")
      m:stop("evil")
      local st = stats(m, "n1")
      assert.is_true(st.auth_untrusted > before.auth_untrusted)
      before = st

      -- n2's public key with a proof signed by another key: 4401
      p = P.connect(url, { id = "n2", priv = K.evil.priv, pub = K.n2.pub, ca = F.ca })
      p:hello()
      p:expect_hello()
      p:auth()
      assert.equal(4401, (p:wait_closed()))
      grew(m, "n1", before, "auth_bad_signature")

      -- a replay: n1 proves itself to anyone who claims a trusted id (its
      -- proof comes before it checks ours), so an attacker can capture n1's
      -- hello and auth; replayed to n2 on another connection, they fail
      local cap = P.connect(url, { id = "n2", pub = K.n2.pub, ca = F.ca })
      cap:hello()
      local h1 = cap:expect_hello()
      local a1 = cap:expect(function(v) return v.type == "auth" end, "n1's proof")
      assert.equal("n1", a1.from)
      cap:wait_closed(8) -- no proof from us: n1 gives up after hello_timeout (4408)
      assert.equal(4408, cap.c.close_code)
      local b2 = stats(m, "n2")
      local r = P.connect(m:url("n2"), { id = "n1", ca = F.ca })
      assert(r:send(h1))
      r:expect_hello()
      assert(r:send(a1))
      assert.equal(4401, (r:wait_closed()))
      grew(m, "n2", b2, "auth_bad_signature")
      -- the same replay with the TLS channel of the capture left out of
      -- the picture: a proof this process makes itself for the wrong
      -- channel fails too (channel binding)
      local q = P.connect(m:url("n2"), { id = "n1", priv = K.n1.priv, pub = K.n1.pub, ca = F.ca })
      q:hello()
      q:expect_hello()
      q:auth({ binding = string.rep("\0", 32) })
      assert.equal(4401, (q:wait_closed()))

      -- frames before authentication: 4425, and nothing they say is used
      before = stats(m, "n1")
      p = P.connect(url, { id = "n2", pub = K.n2.pub, ca = F.ca })
      p:hello()
      p:send({ type = "registry_sync", id = "x", from = "n2", to = "n1", data = { seq = 1 << 40, routes = {
        { path = { "n2" }, seq = 1 << 40, servers = { "evil" } } } } })
      assert.equal(4425, (p:wait_closed()))
      p = P.connect(url, { id = "n3", ca = F.ca })
      p:send({ type = "server_call", id = "c1", from = "n3", to = "n1", ttl = 3, route = { "n3" },
        data = { server = "counter", method = "increment", args = json.array(), timeout_ms = 1000 } })
      assert.equal(4425, (p:wait_closed()))
      st = stats(m, "n1")
      assert.equal(2, st.auth_early - before.auth_early)

      -- through all of it the real link n1 - n2 stayed up, and calls work
      assert.equal(since, peer_ids(m, "n1").n2.since)
      assert.same({ "counter", "counter_server" }, server_list(m, "n1", "n2"))
      assert.equal(1, m:call_via("n1", "n3", "counter", "increment", {}))
      assert.equal(0, m:call_via("n1", "n1", "counter", "get", {}))
    end, { timeout = 120 })
  end)

  it("holds a member to its own identity: spoofed from, pre-sent ids, forged and replaced entries", function()
    MH.run(function(m)
      keyed_line(m, { "n1", "n2", "n3" })
      -- this process links to n2 as the trusted member m5
      local p = P.connect(m:url("n2"), { id = "m5", priv = K.m5.priv, pub = K.m5.pub, ca = F.ca })
      local a = p:handshake()
      assert.equal("n2", a.from)
      local adv = p:expect(function(v) return v.type == "registry_sync" end, "n2's table")
      MH.wait_until(function() return peer_ids(m, "n2").m5 end, "n2 to link to m5")

      -- n2's ids are the node id and 16 random base64 characters
      local seen = {}
      for _, id in ipairs({ p.peer_hello.id, a.id, adv.id }) do
        assert.truthy(id:match("^n2%-[%w+/]+$") and #id == 19, id)
        assert.is_nil(seen[id])
        seen[id] = true
      end
      -- the entries n2 passes on are signed by their destinations
      local n3_entry
      for _, r in ipairs(adv.data.routes) do
        assert.is_string(r.sig)
        assert.is_number(r.exp)
        if r.path[#r.path] == "n3" then n3_entry = r end
      end
      assert(n3_entry, "no entry for n3 in n2's table")

      -- a call "from n1" sent by m5: the route does not start at m5's link
      local before = stats(m, "n2")
      local function call_env(id, from, to, route)
        return { type = "server_call", id = id, from = from, to = to, ttl = 8, route = route,
          data = { server = "counter", method = "increment", args = json.array({ 100 }), timeout_ms = 2000 } }
      end
      p:send(call_env("s1", "n1", "n2", { "n1" }))
      local ans = p:expect(function(v) return v.type == "server_response" and v.reply_to == "s1" end, "s1's answer")
      assert.equal("EINVAL", ans.data.error.code)
      p:send(call_env("s2", "n1", "n3", { "n1" }))
      ans = p:expect(function(v) return v.type == "server_response" and v.reply_to == "s2" end, "s2's answer")
      assert.equal("EINVAL", ans.data.error.code)
      p:send({ type = "route_message", id = "s3", from = "n1", to = "n3", ttl = 8, route = { "n1", "m5", "x" },
        data = { payload = "forged" } })
      -- pre-sent ids: 500 calls under n1's name that n2 would otherwise
      -- remember; none is served or remembered
      for i = 1, 500 do assert(p:send(call_env("n1-" .. i, "n1", "n2", { "n1" }))) end
      local st = grew(m, "n2", before, "spoofed_messages", 503)
      assert.equal(503, st.spoofed_messages - before.spoofed_messages)
      assert.equal(before.calls_served, st.calls_served)
      assert.equal(before.dedup_entries, st.dedup_entries)
      assert.equal(1, m:call_via("n1", "n2", "counter", "increment", {}))
      assert.equal(0, m:call_via("n1", "n3", "counter", "get", {}))

      -- forged, altered, expired and untrusted entries are dropped and counted
      before = stats(m, "n2")
      local now = os.time()
      local altered = json.decode(json.encode(n3_entry))
      altered.path = { "m5", "n3" }
      altered.servers = json.array({ "counter", "evil" })
      local bumped = json.decode(json.encode(n3_entry))
      bumped.path = { "m5", "n3" }
      bumped.seq = n3_entry.seq + 1000
      local ghost = key("ghost")
      local routes = {
        -- unsigned
        { path = { "m5", "n3" }, seq = 1 << 50, servers = json.array({ "evil" }) },
        -- m5 signs for n1
        P.signed_entry({ "m5", "n1" }, 1 << 50, { "evil" }, now + 600, K.m5.priv, K.m5.pub),
        altered, -- n3's signature, other servers
        bumped,  -- n3's signature, another seq
        -- m5 signs for m5x, a node the trust file does not name
        P.signed_entry({ "m5", "m5x" }, 1, {}, now + 600, K.m5.priv, K.m5.pub),
        -- a key of its own for a derived id the trust file does not name
        P.signed_entry({ "m5", ghost.id }, 1, { "ghost" }, now + 600, ghost.priv, ghost.pub),
        -- m5's own entry, expired
        P.signed_entry({ "m5" }, 7, { "old" }, now - 5, K.m5.priv, K.m5.pub),
      }
      p:send({ type = "registry_sync", id = "adv1", from = "m5", to = "n2", data = { seq = 7, full = false,
        routes = routes } })
      grew(m, "n2", before, "entries_bad_signature", 3)
      st = grew(m, "n2", before, "entries_untrusted", 2)
      assert.equal(1, st.entries_unsigned - before.entries_unsigned)
      assert.equal(3, st.entries_bad_signature - before.entries_bad_signature)
      assert.equal(2, st.entries_untrusted - before.entries_untrusted)
      assert.equal(1, st.entries_expired - before.entries_expired)
      -- m5's own entry, signed by m5, is accepted: the member is advertised
      p:send({ type = "registry_sync", id = "adv2", from = "m5", to = "n2", data = { seq = 8, full = false,
        routes = { P.signed_entry({ "m5" }, 8, { "m5svc" }, os.time() + 600, K.m5.priv, K.m5.pub) } } })
      MH.wait_until(function() return server_list(m, "n1", "m5")[1] == "m5svc" end, "n1 to learn m5's server")
      -- and nobody else's entries changed
      assert.same({ "counter", "counter_server" }, server_list(m, "n1", "n3"))
      assert.same({ "counter", "counter_server" }, server_list(m, "n1", "n2"))
      assert.same({ "counter", "counter_server" }, server_list(m, "n3", "n1"))
      assert.equal(2, m:call_via("n1", "n2", "counter", "increment", {}))

      -- a second link proving m5's key is the usual duplicate (4409);
      -- one claiming n1 with m5's key is refused (4403), and n1 - n2 stays
      local since = peer_ids(m, "n2").n1.since
      local dup = P.connect(m:url("n2"), { id = "m5", priv = K.m5.priv, pub = K.m5.pub, ca = F.ca })
      dup:handshake()
      assert.equal(4409, (dup:wait_closed()))
      local imp = P.connect(m:url("n2"), { id = "n1", priv = K.m5.priv, pub = K.m5.pub, ca = F.ca })
      imp:hello()
      assert.equal(4403, (imp:wait_closed()))
      assert.equal(since, peer_ids(m, "n2").n1.since)
      assert.truthy(peer_ids(m, "n2").m5)
      p:close()
    end, { timeout = 120 })
  end)

  it("entries are signed again before they expire; a held entry that expires is dropped", function()
    MH.run(function(m)
      local TTL = { TTL_COUNTER, "10" } -- entry_ttl = 10 s: signed again every ~5 s
      start_nodes(m, {
        { "n1", script = TTL[1], args = keyed("n1", { TTL[2] }) },
        { "n2", peers = { "n1" }, script = TTL[1], args = keyed("n2", { TTL[2] }) },
        { "n3", peers = { "n2" }, script = TTL[1], args = keyed("n3", { TTL[2] }) },
      })
      m:wait_converged(30)
      -- this process links to n2 as m5 and advertises an entry that
      -- expires in 3 s, which it never renews
      local p = P.connect(m:url("n2"), { id = "m5", priv = K.m5.priv, pub = K.m5.pub })
      p:handshake()
      local first = p:expect(function(v) return v.type == "registry_sync" end, "n2's table")
      local exp3
      for _, r in ipairs(first.data.routes) do
        if r.path[#r.path] == "n3" then exp3 = r.exp end
      end
      assert(exp3, "no entry for n3")
      p:send({ type = "registry_sync", id = "adv", from = "m5", to = "n2", data = { seq = 1, full = false,
        routes = { P.signed_entry({ "m5" }, 1, { "brief" }, os.time() + 3, K.m5.priv, K.m5.pub) } } })
      MH.wait_until(function() return server_list(m, "n1", "m5")[1] == "brief" end, "n1 to learn m5's entry")
      local before = stats(m, "n2")
      MH.wait_until(function() return #server_list(m, "n1", "m5") == 0 end, "m5's entry to expire", 10)
      assert.equal(1, stats(m, "n2").entries_expired - before.entries_expired)
      -- n3 signed its entry again: n2 passes on a later expiry
      p:expect(function(v)
        if v.type ~= "registry_sync" then return false end
        for _, r in ipairs(v.data.routes) do
          if r.path[#r.path] == "n3" and r.exp > exp3 then return true end
        end
        return false
      end, "n3's entry signed again", 15)
      -- past the first signatures' lifetime the nodes still hold each
      -- other's entries (only m5's expired, at n2 and perhaps at the
      -- others before n2's withdrawal reached them), and calls still cross
      rn.sleep(math.max(0, exp3 + 2 - os.time()))
      for _, id in ipairs({ "n1", "n2", "n3" }) do
        local st = stats(m, id)
        assert.is_true(st.entries_expired <= 1, id)
        assert.equal(0, st.entries_bad_signature + st.entries_unsigned + st.entries_untrusted, id)
      end
      assert.same({ "counter", "counter_server" }, server_list(m, "n1", "n3"))
      assert.same({ "counter", "counter_server" }, server_list(m, "n1", "n2"))
      assert.same({ "counter", "counter_server" }, server_list(m, "n3", "n1"))
      assert.equal(1, m:call_via("n1", "n3", "counter", "increment", {}))
      p:close()
    end, { timeout = 90 })
  end)

  it("a cluster secret proves membership; a wrong or missing secret is refused", function()
    MH.run(function(m)
      start_nodes(m, {
        { "s1", args = { "--mesh-secret", SECRET } },
        { "s2", peers = { "s1" }, args = { "--mesh-secret", SECRET } },
        { "s3", peers = { "s2" }, args = { "--mesh-secret", SECRET } },
      })
      m:wait_converged(30)
      assert.equal(1, m:call_via("s1", "s3", "counter", "increment", {}))
      local st = assert(m:status("s1"))
      assert.equal("secret", st.auth)
      assert.equal(2, st.version)
      local secret = "correct horse battery staple 42"
      -- an honest peer with the secret (no TLS here: the channel binding is
      -- empty) gets s1's table, whose entries are not signed
      local p = P.connect(m:url("s1"), { id = "member", secret = secret })
      p:handshake()
      local adv = p:expect(function(v) return v.type == "registry_sync" end, "s1's table")
      for _, r in ipairs(adv.data.routes) do assert.is_nil(r.sig) end
      p:close()
      local before = stats(m, "s1")
      -- the wrong secret: 4402
      p = P.connect(m:url("s1"), { id = "intruder", secret = "an entirely different secret!!" })
      p:hello()
      p:expect_hello()
      p:auth()
      assert.equal(4402, (p:wait_closed()))
      -- no proof of the secret: 4426
      p = P.connect(m:url("s1"), { id = "intruder" })
      p:hello()
      p:expect_hello()
      p:auth()
      assert.equal(4426, (p:wait_closed()))
      -- a relaynet process with the wrong secret file
      start_nodes(m, { { "s4", peers = { "s1" }, args = { "--mesh-secret", WRONG_SECRET } } })
      local st1 = grew(m, "s1", before, "auth_bad_secret", 2)
      assert.equal(1, st1.auth_required - before.auth_required)
      MH.wait_until(function() return m:stderr("s4"):find("4402", 1, true) end, "s4 to log 4402")
      assert.is_nil(peer_ids(m, "s1").s4)
      assert.equal(2, m:call_via("s3", "s3", "counter", "increment", {}))
    end, { timeout = 90 })
  end)

  it("refuses a secret file that others may read", function()
    local path = DIR .. "/open-secret"
    write(path, "correct horse battery staple 42\n")
    assert(os.execute("chmod 640 " .. H.q(path)))
    assert.same({ nil, "EINVAL: the secret file " .. path .. " may be read by others (chmod 600 it)", "EINVAL" },
      { rn.mesh_auth { secret = path } })
    assert(os.execute("chmod 600 " .. H.q(path)))
    assert.is_true(rn.mesh_auth { secret = path })
    assert.is_true(rn.mesh_auth {})
    assert.same({ nil, "EINVAL: cannot read the secret file " .. DIR .. "/none: No such file or directory", "EINVAL" },
      { rn.mesh_auth { secret = DIR .. "/none" } })
  end)

  it("keys without a trust file bind ids derived from the keys", function()
    MH.run(function(m)
      local a, b, c = K.n1, K.n2, K.n3
      start_nodes(m, {
        { a.id, args = { "--node-key", a.file } },
        { b.id, peers = { a.id }, args = { "--node-key", b.file } },
        { c.id, peers = { b.id }, args = { "--node-key", c.file } },
      })
      m:wait_converged(30)
      assert.equal(c.id, m:call_via(a.id, c.id, "counter", "whoami", {}))
      -- a key whose derived id is not the id it claims: 4403
      local p = P.connect(m:url(a.id), { id = b.id, priv = K.evil.priv, pub = K.evil.pub })
      p:hello()
      assert.equal(4403, (p:wait_closed()))
    end, { timeout = 60 })
  end)

  it("access rules refuse calls with EACCES (JSON-RPC -32009)", function()
    MH.run(function(m)
      local rules = json.encode({ n1 = { "counter.*" }, ["*"] = { "counter.get" } })
      start_nodes(m, {
        { "n1", args = keyed("n1") },
        { "n2", peers = { "n1" }, script = ACCESS, args = keyed("n2", { rules }) },
        { "n3", peers = { "n2" }, args = keyed("n3") },
      })
      m:wait_converged(30)
      assert.equal(1, m:call_via("n1", "n2", "counter", "increment", {}))
      assert.equal(1, m:call_via("n3", "n2", "counter", "get", {}))
      local res = assert(m:rpc("n3", "remote_call", { node_id = "n2", server_name = "counter",
        method = "increment", args = json.array() }))
      assert.equal(-32009, res.error.code)
      assert.equal("EACCES", res.error.data.code)
      assert.equal("EACCES: node n3 may not call counter.increment on node n2", res.error.message)
      -- refused before anything says whether the server exists
      local r, err, code = m:call_via("n3", "n2", "nosuch", "x", {})
      assert.is_nil(r)
      assert.equal("EACCES", code, err)
      assert.equal(2, stats(m, "n2").calls_denied)
      -- calls to n3 itself are not n2's business
      assert.equal(1, m:call_via("n2", "n3", "counter", "increment", {}))
    end, { timeout = 60 })
  end)
end)
