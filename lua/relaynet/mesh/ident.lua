-- relaynet.mesh.ident: this node's id, the ids of the messages it sends,
-- and the key that names a call of another node.
--
-- The node id persists across runs. It can be changed with set_node_id only
-- while no link is up (peers know the node by it).

local S = require("relaynet.mesh.state")

local I = {}

-- Private to this file: the node id, and the per-process prefix and counter
-- of message ids.
local node_id
local id_prefix
local next_id = 0

--- n random bytes from /dev/urandom (math.random when it cannot be read),
--- as 2n lowercase hex digits.
local function random_hex(n)
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(n) or nil
  if f then f:close() end
  if not bytes then
    local t = {}
    for i = 1, n do t[i] = string.char(math.random(0, 255)) end
    bytes = table.concat(t)
  end
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

--- This node's id: the one set with set_node_id, else "node-" and 8 random
--- hex digits chosen on first use.
function I.node_id()
  if not node_id then node_id = "node-" .. random_hex(4) end
  return node_id
end

--- Sets the node id: 1-64 characters of letters, digits, '-', '_', '.', ':',
--- starting with a letter or digit. Raises when it is not, or when links are up.
function I.set_node_id(id)
  if type(id) ~= "string" or not id:match("^[%w][%w%-_.:]*$") or #id > 64 then
    error("relaynet.set_node_id: a node id is 1-64 characters of letters, digits, '-', '_', '.', ':'", 2)
  end
  if next(S.links) then error("relaynet.set_node_id: cannot change the node id while links are up", 2) end
  node_id = id
end

--- A new message id: node id, a random per-process prefix, a counter. The
--- prefix matters: a node restarted under the same id starts its counter
--- again, and without it its first calls would repeat ids that peers still
--- remember in their dedup window (they would drop them as duplicates).
function I.new_id()
  next_id = next_id + 1
  if not id_prefix then id_prefix = "-" .. random_hex(4) .. "-" end
  return I.node_id() .. id_prefix .. next_id
end

--- The key of a call in the forward and dedup tables: the caller's node id
--- and its call id, length-prefixed so that no two (caller, id) pairs give
--- the same key whatever bytes they contain.
function I.call_key(caller, id)
  return #caller .. ":" .. caller .. id
end

return I
