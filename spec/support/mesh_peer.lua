-- spec/support/mesh_peer.lua: a mesh peer made by hand, for the attacks of
-- spec/mesh_auth_spec.lua. It speaks the link protocol of docs/PROTOCOL.md
-- itself (version 2: the hello with its nonce and key, the auth proofs over
-- the transcript, channel binding under TLS) with relaynet.core's
-- primitives, so that a spec can play an honest member, an outsider with the
-- wrong key or secret, or a replayer, and send any envelope it likes once
-- (or before) it is linked. The transcript here is written from the
-- protocol document, not taken from lua/relaynet/mesh/auth.lua.
--
--   local P = require("mesh_peer")
--   local p = P.connect(url, { id = "m5", priv = priv, pub = pub, ca = F.ca })
--   p:hello()                      -- our hello (a fresh nonce, our key)
--   p:expect_hello()               -- the node's hello
--   p:auth()                       -- our proof
--   p:expect(function(v) return v.type == "auth" end, "the node's proof")
--   p:wait_closed() -> close code, reason

local rn = require("relaynet")
local core = require("relaynet.core")
local conn = require("relaynet.conn")
local json = require("relaynet.json")

local P = {}

local Peer = {}
Peer.__index = Peer

--- The transcript a proof covers (PROTOCOL.md, "Authentication").
function P.transcript(prover, verifier, prover_nonce, verifier_nonce, binding)
  return "relaynet-mesh-auth\0" .. string.pack(">I1s1s1s1s1s1", 2, prover, verifier, prover_nonce, verifier_nonce,
    binding or "")
end

--- The signed text of a route entry (PROTOCOL.md, "Signed route entries").
function P.entry_text(node, seq, exp, servers)
  local parts = { "relaynet-entry\0", string.pack(">I1s1i8i8I2", 2, node, seq, exp, #servers) }
  for i = 1, #servers do parts[i + 2] = string.pack(">s1", servers[i]) end
  return table.concat(parts)
end

--- A route entry for `node` signed with `priv`: { path, seq, servers, exp, sig, pub }.
function P.signed_entry(path, seq, servers, exp, priv, pub)
  local node = path[#path]
  return { path = path, seq = seq, servers = json.array(servers), exp = exp,
    sig = core.b64encode(core.ed25519_sign(priv, P.entry_text(node, seq, exp, servers))),
    pub = pub and core.b64encode(pub) or nil }
end

--- Connects to `url` (a node's /ws/p2p). opts: id (the id it claims), priv
--- and pub (its key, optional), secret (optional), ca (for wss), pings
--- (default true: answers the node's pings). Every decoded message is kept
--- in self.msgs.
function P.connect(url, opts)
  local self = setmetatable({ id = opts.id, priv = opts.priv, pub = opts.pub, secret = opts.secret,
    msgs = {}, pings = opts.pings ~= false }, Peer)
  self.c = assert(rn.ws_connect(url, { timeout = 5, ca = opts.ca, on_message = function(msg)
    local v = json.decode(msg)
    if type(v) ~= "table" then return end
    self.msgs[#self.msgs + 1] = v
    if v.type == "ping" and self.pings and self.c then
      self.c:send(assert(json.encode({ type = "pong", id = v.id, from = self.id, to = v.from })))
    end
  end }))
  return self
end

--- Sends an envelope (a table, encoded) or raw text.
function Peer:send(env)
  if type(env) == "table" then env = assert(json.encode(env)) end
  return self.c:send(env)
end

--- Waits until a kept message satisfies pred; returns it (and removes it
--- from self.msgs). Raises after `timeout` (default 5 s).
function Peer:expect(pred, what, timeout)
  local deadline = rn.now() + (timeout or 5)
  while true do
    for i, v in ipairs(self.msgs) do
      if pred(v) then
        table.remove(self.msgs, i)
        return v
      end
    end
    if rn.now() > deadline then
      error("timed out waiting for " .. what .. " (closed: " .. tostring(self.c.close_code) .. " " ..
        tostring(self.c.close_reason) .. ")", 2)
    end
    rn.sleep(0.02)
  end
end

--- The channel binding of this connection (the TLS exporter, "" without TLS).
function Peer:binding()
  return conn.tls_binding(self.c._rec) or ""
end

--- Sends a version 2 hello claiming self.id with a fresh nonce (or
--- opts.nonce) and self.pub (or opts.pub; false: none). opts.data replaces
--- the whole data table.
function Peer:hello(opts)
  opts = opts or {}
  self.nonce = opts.nonce or core.random(32)
  local pub = opts.pub
  if pub == nil then pub = self.pub end
  local data = opts.data or { version = 2, node = self.id, features = json.array({ "delta" }),
    nonce = core.b64encode(self.nonce), pub = pub and core.b64encode(pub) or nil }
  self.sent_hello = { type = "hello", id = self.id .. "-" .. core.b64encode(core.random(6)), from = self.id,
    data = data }
  return self:send(self.sent_hello)
end

--- Waits for the node's hello; stores its nonce (self.peer_nonce) and id.
function Peer:expect_hello(timeout)
  local h = self:expect(function(v) return v.type == "hello" end, "the node's hello", timeout)
  self.peer_hello = h
  self.peer_id = h.from
  self.peer_nonce = h.data.nonce and core.b64decode(h.data.nonce)
  return h
end

--- Sends our proof over (self.id, the node, our nonce, its nonce, the
--- channel): sig with self.priv, mac with self.secret. opts.binding
--- replaces the channel binding.
function Peer:auth(opts)
  opts = opts or {}
  local t = P.transcript(self.id, self.peer_id, self.nonce, self.peer_nonce, opts.binding or self:binding())
  local data = {}
  if self.priv then data.sig = core.b64encode(core.ed25519_sign(self.priv, t)) end
  if self.secret then data.mac = core.b64encode(core.hmac_sha256(self.secret, t)) end
  self.sent_auth = { type = "auth", id = self.id .. "-" .. core.b64encode(core.random(6)), from = self.id,
    to = self.peer_id, data = data }
  return self:send(self.sent_auth)
end

--- The whole handshake of an honest peer: hello, the node's hello, our
--- proof, the node's proof. Returns the node's auth message.
function Peer:handshake()
  self:hello()
  self:expect_hello()
  self:auth()
  return self:expect(function(v) return v.type == "auth" end, "the node's proof")
end

--- Waits until the node closes the connection: close code, reason.
function Peer:wait_closed(timeout)
  local deadline = rn.now() + (timeout or 5)
  while self.c:is_open() do
    if rn.now() > deadline then error("the node did not close the link within " .. (timeout or 5) .. " s", 2) end
    rn.sleep(0.02)
  end
  return self.c.close_code, self.c.close_reason
end

function Peer:close()
  if self.c:is_open() then self.c:close_wait(1000, "bye") end
end

return P
