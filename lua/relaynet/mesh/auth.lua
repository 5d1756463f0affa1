-- relaynet.mesh.auth: mesh authentication (protocol version 2,
-- docs/PROTOCOL.md "Authentication"): this node's credentials, the proofs
-- of the link handshake, signed route entries, access rules, and the
-- rate-limited log of what was refused.
--
-- Credentials are set with configure() (rn.mesh_auth) and persist across
-- runs in S.auth: an Ed25519 key (key mode: a link proves it with a
-- signature, and the node signs its own route entry), a trust file binding
-- node ids to public keys, and a cluster secret (secret mode: a link proves
-- it with HMAC-SHA256; it proves membership only). With none of them the
-- node speaks protocol version 1 and nothing here is used, except access
-- rules, which apply to calls from other nodes in both versions.
--
-- Every primitive is OpenSSL's, through relaynet.core: nothing here is
-- cryptography of its own, only what is signed and checked.

local core = require("relaynet.core")
local S = require("relaynet.mesh.state")
local I = require("relaynet.mesh.ident")
local W = require("relaynet.mesh.wire")
local log = require("relaynet.log")

local cfg = S.config
local b64e, b64d = core.b64encode, core.b64decode
local pack = string.pack
local is_name, now = W.is_name, W.now

local A = {}

--- The protocol version of a node with credentials.
A.VERSION = 2

--- Close codes of the handshake (PROTOCOL.md, "Close codes on links") and
--- the counter in mesh_status().stats that each refusal adds to.
A.MALFORMED = 4400     -- auth_malformed: a hello or auth frame that cannot be read
A.BAD_SIGNATURE = 4401 -- auth_bad_signature: the key proof does not verify (wrong key, replay)
A.BAD_SECRET = 4402    -- auth_bad_secret: the secret proof does not verify (wrong secret, replay)
A.UNTRUSTED = 4403     -- auth_untrusted: the key is not the one bound to the claimed id;
                       -- auth_impostor: the id is linked already, with another key
A.EARLY = 4425         -- auth_early: a frame other than hello or auth before authentication
A.REQUIRED = 4426      -- auth_required: one side has credentials, the other offers none

-- What a refused link is counted as, by close code, at the end that
-- refused it (the dialing end counts auth_refused_by_peer).
A.CODES = { [4400] = true, [4401] = true, [4402] = true, [4403] = true, [4425] = true, [4426] = true }

-- The log of refusals ------------------------------------------------------------

-- One line per peer (its address, or the URL this node dials) per
-- LOG_INTERVAL seconds, whatever the reason: an attacker that retries
-- cannot flood stderr. At most LOG_KEYS peers are remembered; past that
-- the memory starts again empty.
local LOG_INTERVAL, LOG_KEYS = 60, 1024
local logged, n_logged = {}, 0

--- Logs "mesh: <msg>" at warn (relaynet.log) unless a line about `peer`
--- was logged in the last minute. Returns true when it logged.
function A.log(peer, msg)
  local t = now()
  peer = tostring(peer)
  local last = logged[peer]
  if last and t - last < LOG_INTERVAL then return false end
  if not last then
    if n_logged >= LOG_KEYS then logged, n_logged = {}, 0 end
    n_logged = n_logged + 1
  end
  logged[peer] = t
  log.warn("mesh: %s", msg)
  return true
end

-- Who a link is, for the log: its claimed id and where it comes from.
local function who(link)
  local where = link.addr or link.url or "?"
  local id = link.claim or link.peer or link.hello_from
  return (id and (tostring(id) .. " at ") or "") .. tostring(where), where
end

--- Refuses `link`: counts it in stats[counter], logs it (rate-limited) and
--- closes the link with `code` and `reason`. Nothing it sends afterwards is
--- read (link.closing).
function A.refuse(link, code, reason, counter)
  S.stats[counter] = S.stats[counter] + 1
  local name, where = who(link)
  A.log(where, string.format("refused the link %s %s: %d %s", link.dir == "in" and "from" or "to", name, code,
    reason))
  link.closing = true
  link:close(code, reason)
end

--- A link this node dialed was closed by the peer with one of the
--- handshake's codes before it was up: counted and logged (rate-limited).
function A.refused_by_peer(link, code, reason)
  S.stats.auth_refused_by_peer = S.stats.auth_refused_by_peer + 1
  local name, where = who(link)
  A.log(where, string.format("the peer %s refused this node's link: %d %s", name, code, tostring(reason)))
end

-- Configuration ------------------------------------------------------------------

--- The node id derived from Ed25519 public key `pub` (32 bytes): "k" and
--- the first 20 hex digits of SHA-256(pub).
function A.key_node_id(pub)
  if type(pub) ~= "string" or #pub ~= 32 then
    error("relaynet.key_node_id: expected a 32-byte Ed25519 public key", 2)
  end
  return "k" .. I.hex(core.sha256(pub):sub(1, 10))
end

local function einval(fmt, ...)
  return W.fail("EINVAL", fmt, ...)
end

-- Reads a trust file: node id -> public key | nil, msg, "EINVAL".
local function read_trust(path)
  local f, oerr = io.open(path, "rb")
  if not f then return einval("cannot read the trust file: %s", tostring(oerr)) end
  local trust, lineno = {}, 0
  for line in f:lines() do
    lineno = lineno + 1
    local s = line:gsub("#.*$", ""):match("^%s*(.-)%s*$")
    if s ~= "" then
      local id, key = s:match("^(%S+)%s+(%S+)$")
      local pub = key and b64d(key)
      local bad
      if not id then
        bad = "expected \"NODE_ID PUBLIC_KEY\""
      elseif not I.valid_id(id) then
        bad = "'" .. id .. "' is not a node id (1-64 letters, digits, '-', '_', '.', ':')"
      elseif not pub or #pub ~= 32 then
        bad = "the key of " .. id .. " is not a base64 Ed25519 public key (32 bytes)"
      elseif trust[id] and trust[id] ~= pub then
        bad = "node " .. id .. " is named twice, with two keys"
      end
      if bad then
        f:close()
        return einval("trust file %s line %d: %s", path, lineno, bad)
      end
      trust[id] = pub
    end
  end
  f:close()
  return trust
end

-- Reads a secret file: its bytes without surrounding white space, at least
-- 16 of them | nil, msg, "EINVAL" (also for a file others may read).
local function read_secret(path)
  local s, rerr, rcode = core.read_private(path)
  if not s then return nil, rerr, rcode end
  s = s:match("^%s*(.-)%s*$")
  if #s < 16 then
    return einval("secret file %s line 1: the secret has %d bytes; at least 16 are needed", path, #s)
  end
  return s
end

-- The cache of verified route entries (see check_entry): destination ->
-- { text, sig }. Emptied whenever the credentials change.
local verified, n_verified = {}, 0
-- The last signature of this node's own entry (see sign_own).
local own

--- Sets this node's credentials (rn.mesh_auth): opts = { key = FILE,
--- trust = FILE, secret = FILE }, each optional; {} (or nil) removes them
--- all, and the node speaks protocol version 1 again. Returns true | nil,
--- msg, code: EKEY for a key file that cannot be used (core.key_load),
--- EINVAL for a trust or secret file that cannot be read or is malformed
--- (the message names the line), or for a trust file without a key. With a
--- key and no id set with set_node_id, the node id becomes the key's
--- (key_node_id). Raises on misuse (wrong types, unknown fields, links up).
function A.configure(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then error("relaynet.mesh_auth: expected a table { key =, trust =, secret = }", 3) end
  for k, v in pairs(opts) do
    if k ~= "key" and k ~= "trust" and k ~= "secret" then
      error("relaynet.mesh_auth: unknown field '" .. tostring(k) .. "' (key, trust, secret)", 3)
    end
    if type(v) ~= "string" then error("relaynet.mesh_auth: " .. k .. " must be a file name", 3) end
  end
  if next(S.links) or S.n_pending > 0 then
    error("relaynet.mesh_auth: cannot change the mesh credentials while links are up", 3)
  end
  local new = {}
  if opts.key then
    local priv, pub, code = core.key_load(opts.key)
    if not priv then return nil, pub, code end
    new.priv, new.pub, new.pub_b64 = priv, pub, b64e(pub)
  end
  if opts.trust then
    if not new.priv then return einval("a trust file needs this node's key too (key = FILE)") end
    local trust, msg, code = read_trust(opts.trust)
    if not trust then return nil, msg, code end
    new.trust = trust
  end
  if opts.secret then
    local secret, msg, code = read_secret(opts.secret)
    if not secret then return nil, msg, code end
    new.secret = secret
  end
  if not new.priv and not new.secret then new = nil end
  if new and new.priv then
    local mine = I.explicit() and I.node_id() or A.key_node_id(new.pub)
    if new.trust and new.trust[mine] and new.trust[mine] ~= new.pub then
      return einval("the trust file names another key for this node (%s)", mine)
    end
    I.set_derived_id(mine)
    -- A restarted node signs with a higher seq than anything its last
    -- run signed (at most 1,000 changes a second are assumed), so its
    -- entries replace the old ones wherever they are still held.
    S.my_seq = math.max(S.my_seq, os.time() * 1000)
  else
    I.set_derived_id(nil)
  end
  S.auth = new
  verified, n_verified, own = {}, 0, nil
  return true
end

--- True when this node has credentials (a key or a secret): its links are
--- authenticated (protocol version 2).
function A.enabled()
  return S.auth ~= nil
end

--- The mode, for mesh_status: "key", "secret", "key+secret" or nil.
function A.mode()
  local a = S.auth
  if not a then return nil end
  if a.priv and a.secret then return "key+secret" end
  return a.priv and "key" or "secret"
end

--- This node's public key in base64, or nil.
function A.public_key()
  return S.auth and S.auth.pub_b64
end

-- The handshake --------------------------------------------------------------------
--
-- hello (version 2) carries a fresh 32-byte nonce and, in key mode, the
-- public key. Once a node has the peer's hello it sends `auth`, a proof
-- over the transcript below; the link is up at a node once the peer's proof
-- verifies.

-- What a proof covers: the protocol version, the prover's and the
-- verifier's ids, their nonces (the prover's first) and the channel binding
-- (the TLS exporter value, or empty without TLS), each length-prefixed.
local function transcript(prover, verifier, prover_nonce, verifier_nonce, binding)
  return "relaynet-mesh-auth\0" .. pack(">I1s1s1s1s1s1", A.VERSION, prover, verifier, prover_nonce, verifier_nonce,
    binding)
end

--- Adds this node's nonce (new for every link) and public key to the data
--- of a version 2 hello on `link`.
function A.hello_data(link, data)
  local nonce = core.random(32)
  link.my_nonce = nonce
  data.nonce = b64e(nonce)
  data.pub = S.auth.pub_b64
end

--- Checks the hello of `from` on `link` against this node's credentials:
--- true (the nonce, the key and the claimed id stored on the link), or
--- false, close code, reason, counter.
function A.check_hello(link, from, data)
  local auth = S.auth
  local nonce = type(data.nonce) == "string" and b64d(data.nonce)
  if not nonce or #nonce ~= 32 then
    return false, A.MALFORMED, "bad hello: no 32-byte nonce", "auth_malformed"
  end
  if auth.priv then
    if data.pub == nil then
      return false, A.REQUIRED, "this node requires a key proof; the peer offers no key", "auth_required"
    end
    local pub = type(data.pub) == "string" and b64d(data.pub)
    if not pub or #pub ~= 32 then
      return false, A.MALFORMED, "bad hello: pub is not a base64 Ed25519 public key", "auth_malformed"
    end
    local trust = auth.trust
    if trust then
      local bound = trust[from]
      if not bound then
        return false, A.UNTRUSTED, "node " .. from .. " is not in the trust file", "auth_untrusted"
      end
      if bound ~= pub then
        return false, A.UNTRUSTED, "the key of node " .. from .. " is not the one the trust file names",
          "auth_untrusted"
      end
    elseif A.key_node_id(pub) ~= from then
      return false, A.UNTRUSTED, "node id " .. from .. " is not derived from its key (no trust file here)",
        "auth_untrusted"
    end
    link.peer_pub = pub
  end
  link.claim, link.peer_nonce = from, nonce
  local binding = link.transport.binding and link.transport.binding()
  link.binding = binding or ""
  return true
end

--- The data of this node's auth message on `link` (whose hello was
--- checked): sig (key mode) and mac (secret mode), base64.
function A.proof(link)
  local auth = S.auth
  local t = transcript(I.node_id(), link.claim, link.my_nonce, link.peer_nonce, link.binding)
  local data = {}
  if auth.priv then data.sig = b64e(core.ed25519_sign(auth.priv, t)) end
  if auth.secret then data.mac = b64e(core.hmac_sha256(auth.secret, t)) end
  return data
end

--- Checks the peer's auth message data on `link`: true, or false, close
--- code, reason, counter. A proof made for another connection (replayed)
--- fails: it covers the other connection's nonces and channel.
function A.check_proof(link, data)
  local auth = S.auth
  if type(data) ~= "table" then return false, A.MALFORMED, "bad auth: no data", "auth_malformed" end
  local t = transcript(link.claim, I.node_id(), link.peer_nonce, link.my_nonce, link.binding)
  if auth.priv then
    if data.sig == nil then
      return false, A.REQUIRED, "this node requires a key proof; the peer sent none", "auth_required"
    end
    local sig = type(data.sig) == "string" and b64d(data.sig)
    if not sig or #sig ~= 64 then return false, A.MALFORMED, "bad auth: sig is not 64 bytes", "auth_malformed" end
    if not core.ed25519_verify(link.peer_pub, t, sig) then
      return false, A.BAD_SIGNATURE, "the key proof of node " .. link.claim .. " does not verify",
        "auth_bad_signature"
    end
  end
  if auth.secret then
    if data.mac == nil then
      return false, A.REQUIRED, "this node requires the cluster secret; the peer sent no proof of it",
        "auth_required"
    end
    local mac = type(data.mac) == "string" and b64d(data.mac)
    if not mac or #mac ~= 32 then return false, A.MALFORMED, "bad auth: mac is not 32 bytes", "auth_malformed" end
    if not core.equal(mac, core.hmac_sha256(auth.secret, t)) then
      return false, A.BAD_SECRET, "wrong cluster secret (or a proof made for another connection)",
        "auth_bad_secret"
    end
  end
  return true
end

-- Signed route entries (key mode) ---------------------------------------------------
--
-- A node's own route entry { path = {node}, seq, servers } carries exp (a
-- Unix time) and sig, an Ed25519 signature by the node over entry_text, and
-- pub, its public key (for receivers that bind ids by derivation). Relays
-- pass exp, sig and pub on unchanged with the destination's seq and
-- servers, so only the destination can change its entry.

-- The signed text of an entry: destination, seq, exp and the server names,
-- each length-prefixed. Every name must be a string of 1-128 bytes. An
-- entry with subscription patterns (`topics`, mesh/pubsub.lua; non-empty)
-- appends their count (2 bytes) and each with a 2-byte length, so an entry
-- without patterns signs the same text as before pub/sub existed.
local function entry_text(node, seq, exp, servers, topics)
  local parts = { "relaynet-entry\0", pack(">I1s1i8i8I2", A.VERSION, node, seq, exp, #servers) }
  for i = 1, #servers do parts[i + 2] = pack(">s1", servers[i]) end
  if topics and #topics > 0 then
    local n = #parts
    parts[n + 1] = pack(">I2", #topics)
    for i = 1, #topics do parts[n + 1 + i] = pack(">s2", topics[i]) end
  end
  return table.concat(parts)
end

--- True when this node signs its own route entry (it has a key).
function A.signing()
  local auth = S.auth
  return auth ~= nil and auth.priv ~= nil
end

--- Signs route `r`, this node's own entry (path = { id }), in place: adds
--- exp, sig and pub. A signature is reused while its seq, servers and id
--- are unchanged and more than half of entry_ttl is left.
function A.sign_own(r)
  local auth = S.auth
  local t = os.time()
  local node = r.path[1]
  local key = entry_text(node, r.seq, 0, r.servers, r.topics)
  if not own or own.key ~= key or own.exp - t < cfg.entry_ttl / 2 then
    local exp = t + cfg.entry_ttl
    own = { key = key, exp = exp,
      sig = b64e(core.ed25519_sign(auth.priv, entry_text(node, r.seq, exp, r.servers, r.topics))) }
  end
  r.exp, r.sig, r.pub = own.exp, own.sig, auth.pub_b64
  return r
end

--- True when this node's own signature has less than half of entry_ttl
--- left at Unix time `t` (the health loop then advertises it again, signed
--- anew).
function A.own_stale(t)
  return own ~= nil and own.exp - t < cfg.entry_ttl / 2
end

-- The key that signs `dest`'s entries: the trust file's, else (no trust
-- file) the key the entry carries when the id is derived from it.
local function key_for(dest, r)
  local trust = S.auth.trust
  if trust then return trust[dest] end
  local pub = type(r.pub) == "string" and b64d(r.pub)
  if pub and #pub == 32 and A.key_node_id(pub) == dest then return pub end
  return nil
end

--- Checks route entry `r` for destination `dest` at Unix time `t` (key
--- mode): nil when it is good, else the stats counter of the reason
--- (entries_unsigned, entries_bad_signature, entries_expired,
--- entries_untrusted) and a description. An expiry more than twice
--- entry_ttl ahead counts as expired too (a signer's clock far ahead).
--- Verified (text, signature) pairs are cached per destination, so the
--- same entry arriving from every neighbour is verified once.
function A.check_entry(dest, r, t)
  local seq, exp, sig, servers = r.seq, r.exp, r.sig, r.servers
  if sig == nil then return "entries_unsigned", "no signature" end
  if math.type(seq) ~= "integer" or math.type(exp) ~= "integer" or type(sig) ~= "string"
    or type(servers) ~= "table" or #servers > 65535 then
    return "entries_bad_signature", "malformed signed fields"
  end
  if exp < t then return "entries_expired", "expired " .. (t - exp) .. " s ago" end
  if exp > t + 2 * cfg.entry_ttl then return "entries_expired", "expires too far ahead" end
  for i = 1, #servers do
    if not is_name(servers[i]) then return "entries_bad_signature", "a server name is malformed" end
  end
  local topics = r.topics
  if topics ~= nil then
    if type(topics) ~= "table" or #topics > 65535 then return "entries_bad_signature", "malformed topics" end
    for i = 1, #topics do
      if not is_name(topics[i], 65535) then return "entries_bad_signature", "a topic pattern is malformed" end
    end
  end
  local text = entry_text(dest, seq, exp, servers, topics)
  local c = verified[dest]
  if c and c.text == text and c.sig == sig then return nil end
  local pub = key_for(dest, r)
  if not pub then return "entries_untrusted", "no trusted key for " .. dest end
  local raw = b64d(sig)
  if not raw or #raw ~= 64 or not core.ed25519_verify(pub, text, raw) then
    return "entries_bad_signature", "the signature does not verify"
  end
  S.stats.entries_verified = S.stats.entries_verified + 1
  if not c then
    if n_verified >= 2 * cfg.max_destinations then verified, n_verified = {}, 0 end
    n_verified = n_verified + 1
  end
  verified[dest] = { text = text, sig = sig }
  return nil
end

-- Access rules --------------------------------------------------------------------

-- A compiled rule: { all = true } or { servers = { name = true },
-- methods = { ["server.method"] = true } }.
local function compile_rule(who_id, list)
  if type(list) ~= "table" then
    error("relaynet.mesh_access: the rule of '" .. who_id .. "' must be a list of \"server.method\" patterns", 4)
  end
  local r = { all = false, servers = {}, methods = {} }
  for i, p in ipairs(list) do
    if p == "*" then
      r.all = true
    elseif type(p) == "string" and p:match("^[^%s%.]+%.%*$") then
      r.servers[p:sub(1, -3)] = true
    elseif type(p) == "string" and p:match("^[^%s%.]+%.[^%s]+$") and not p:find("*", 1, true) then
      r.methods[p] = true
    else
      error(string.format("relaynet.mesh_access: pattern %d of '%s' is not \"*\", \"server.*\" or "
        .. "\"server.method\": %s", i, who_id, tostring(p)), 4)
    end
  end
  return r
end

--- Sets the access rules (rn.mesh_access): { [node id or "*"] = { patterns } }
--- where a pattern is "*", "server.*" or "server.method"; nil removes them
--- (every caller may call everything). A call from another node is allowed
--- when a pattern of its caller's entry or of "*" matches. Raises on a
--- malformed rule.
function A.set_access(rules)
  if rules == nil then
    S.access = nil
    return true
  end
  if type(rules) ~= "table" then error("relaynet.mesh_access: expected a table of rules or nil", 3) end
  local compiled = {}
  for k, list in pairs(rules) do
    if k ~= "*" and not I.valid_id(k) then
      error("relaynet.mesh_access: '" .. tostring(k) .. "' is neither a node id nor \"*\"", 3)
    end
    compiled[k] = compile_rule(k, list)
  end
  S.access = compiled
  return true
end

local function matches(r, server, method)
  return r ~= nil and (r.all or r.servers[server] or r.methods[server .. "." .. method]) or false
end

--- True when node `caller` may call server.method here (always, without
--- rules).
function A.allowed(caller, server, method)
  local acc = S.access
  if not acc then return true end
  return matches(acc[caller], server, method) or matches(acc["*"], server, method)
end

return A
