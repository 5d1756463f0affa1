-- relaynet.mesh.ident: this node's id, the ids of the messages it sends,
-- and the key that names a call of another node.
--
-- The node id persists across runs. It can be changed with set_node_id only
-- while no link is up (peers know the node by it). A node with a key and no
-- id of its own gets the id derived from its key (mesh/auth.lua sets it
-- with set_derived_id).

local core = require("relaynet.core")
local S = require("relaynet.mesh.state")

local I = {}

-- Private to this file: the node id, whether set_node_id chose it, and the
-- pool of random text that message ids are cut from.
local node_id
local explicit = false
local id_pool, id_pos = "", 1

-- Bytes drawn from the CSPRNG at once for message ids: 768 bytes are 1,024
-- base64 characters without padding, 64 ids of 16 characters (96 bits).
local POOL_BYTES, ID_CHARS = 768, 16

--- The bytes of `s` as lowercase hex digits.
function I.hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

--- This node's id: the one set with set_node_id, else "node-" and 8 random
--- hex digits chosen on first use.
function I.node_id()
  if not node_id then node_id = "node-" .. I.hex(core.random(4)) end
  return node_id
end

--- True when `id` is a valid node id: 1-64 characters of letters, digits,
--- '-', '_', '.', ':', starting with a letter or digit.
function I.valid_id(id)
  return type(id) == "string" and #id <= 64 and id:match("^[%w][%w%-_.:]*$") ~= nil
end

--- Sets the node id (see valid_id). Raises when it is not valid, or when
--- links are up. An id set here wins over the one derived from a key.
function I.set_node_id(id)
  if not I.valid_id(id) then
    error("relaynet.set_node_id: a node id is 1-64 characters of letters, digits, '-', '_', '.', ':'", 2)
  end
  if next(S.links) then error("relaynet.set_node_id: cannot change the node id while links are up", 2) end
  node_id = id
  explicit = true
end

--- True when set_node_id chose the node id.
function I.explicit()
  return explicit
end

--- Sets the id derived from this node's key (nil: none, a random id is
--- chosen on first use), unless set_node_id chose the id. Raises when that
--- would change the id while links are up.
function I.set_derived_id(id)
  if explicit or node_id == id then return end
  if next(S.links) then error("relaynet.mesh_auth: cannot change the node id while links are up", 3) end
  node_id = id
end

--- A new message id: the node id, '-', and 16 base64 characters (96 bits)
--- from the CSPRNG, so that nobody can tell a node's next ids from the ids
--- it has seen (a peer that could would send calls under them first and
--- have the node's own calls dropped as duplicates). The random text is
--- drawn 64 ids at a time: one call into the core per 64 ids.
function I.new_id()
  local pos = id_pos
  if pos > #id_pool then
    id_pool = core.b64encode(core.random(POOL_BYTES))
    pos = 1
  end
  id_pos = pos + ID_CHARS
  return I.node_id() .. "-" .. id_pool:sub(pos, pos + ID_CHARS - 1)
end

--- The key of a call in the forward and dedup tables: the caller's node id
--- and its call id, length-prefixed so that no two (caller, id) pairs give
--- the same key whatever bytes they contain.
--- The length prefix of each caller is kept (at most 1,024 callers, then
--- the cache starts again): formatting the length costs more than the rest.
local key_prefix, n_prefix = {}, 0
function I.call_key(caller, id)
  local p = key_prefix[caller]
  if not p then
    if n_prefix >= 1024 then key_prefix, n_prefix = {}, 0 end
    p = #caller .. ":" .. caller
    key_prefix[caller] = p
    n_prefix = n_prefix + 1
  end
  return p .. id
end

return I
