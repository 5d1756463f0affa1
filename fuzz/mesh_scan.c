/* libFuzzer harness: core.mesh_scan, core.mesh_splice_call and
 * core.mesh_splice_publish
 * (csrc/rn_jsonscan.c), the relay fast path, against the decoder.
 *
 * For every input, with two (me, peer) pairs: when mesh_scan vouches for
 * the text (returns 1 or 2), core.json_decode must accept it too, and every
 * field the scan reported must be what the decoded envelope holds (the
 * shape checks of mesh/calls.lua's valid_call and on_response must pass on
 * the decoded value). For a call, mesh_splice_call's text must decode, with
 * the new ttl, timeout_ms and timestamp, `me` appended to the route, and
 * everything else deeply equal to the original. A violation aborts with
 * the input: a finding. (A call with an empty route is never relayed, its
 * route cannot start at its sender: it is not spliced here.) */
#include <stdint.h>
#include <string.h>
#include "fuzz_lua.h"

static lua_State *L;
static int check_ref;

/* For a publish (3), the decoded envelope must pass mesh/pubsub.lua's
 * valid() (with t.topic_len and #t.nodes for the mesh_config bounds), its
 * ttl, route and data.nodes must be t's, `me` must not be listed, and
 * mesh_splice_publish's text must decode to the original with the new ttl,
 * timestamp and data.nodes and `me` appended to the route (unless the route
 * is empty: such a publish is never relayed, as for calls). */
static const char setup[] =
  "local core = require('relaynet.core')\n"
  "local null, array_mt = JSON_NULL, {__name = 'relaynet.json.array'}\n"
  "local decode, scan, splice = core.json_decode, core.mesh_scan, core.mesh_splice_call\n"
  "local splice_pub = core.mesh_splice_publish\n"
  "local D = 32\n"
  "local function is_name(s, max) return type(s) == 'string' and #s > 0 and #s <= (max or 128) end\n"
  "local function same(a, b, path)\n"
  "  if type(a) ~= type(b) then return false, path .. ': ' .. type(a) .. ' vs ' .. type(b) end\n"
  "  if type(a) == 'number' then\n"
  "    if math.type(a) ~= math.type(b) or a ~= b then return false, path .. ': numbers differ' end\n"
  "    return true\n"
  "  end\n"
  "  if type(a) ~= 'table' then\n"
  "    if a == b then return true end\n"
  "    return false, path .. ': ' .. tostring(a) .. ' vs ' .. tostring(b)\n"
  "  end\n"
  "  if (getmetatable(a) == array_mt) ~= (getmetatable(b) == array_mt) then return false, path .. ': array marker' end\n"
  "  for k, va in next, a do\n"
  "    local ok, why = same(va, rawget(b, k), path .. '.' .. tostring(k))\n"
  "    if not ok then return false, why end\n"
  "  end\n"
  "  for k in next, b do\n"
  "    if rawget(a, k) == nil then return false, path .. '.' .. tostring(k) .. ': only in the second' end\n"
  "  end\n"
  "  return true\n"
  "end\n"
  "local function want(c, what) if not c then error('mesh_scan: ' .. what, 2) end end\n"
  "local function same_list(a, b)\n"
  "  if type(a) ~= 'table' or #a ~= #b then return false end\n"
  "  for i = 1, #b do if a[i] ~= b[i] then return false end end\n"
  "  return true\n"
  "end\n"
  "local function check_publish(x, v, t, me, peer)\n"
  "  local d, r = v.data, v.route\n"
  "  want(v.type == 'publish', 'type (publish)')\n"
  "  want(is_name(v.id) and v.from == t.from and is_name(v.from, 64), 'id, from')\n"
  "  want(math.type(v.ttl) == 'integer' and v.ttl == t.ttl, 'ttl')\n"
  "  want(type(d.topic) == 'string' and #d.topic == t.topic_len, 'topic')\n"
  "  want(is_name(d.run) and math.type(d.seq) == 'integer', 'run, seq')\n"
  "  want(same_list(d.nodes, t.nodes) and #t.nodes >= 1, 'nodes')\n"
  "  for i = 1, #t.nodes do want(t.nodes[i] ~= me, 'me listed') end\n"
  "  local has_text, has_json = type(d.text) == 'string', type(d.json) == 'string'\n"
  "  want(has_text ~= has_json and (d.text == nil or has_text) and (d.json == nil or has_json), 'text, json')\n"
  "  want((d.epoch == nil and d.offset == nil) or (is_name(d.epoch, 64) and math.type(d.offset) == 'integer'),\n"
  "    'epoch, offset')\n"
  "  want(same_list(r, t.route) and #r == t.nroute, 'route')\n"
  "  local has = false\n"
  "  for i = 1, #r do if r[i] == me then has = true end end\n"
  "  want(has == t.has_me, 'has_me')\n"
  "  want((r[1] == v.from and r[#r] == peer) == t.route_ends, 'route_ends')\n"
  "  if t.nroute == 0 then return end -- never relayed: the route must start at its sender\n"
  "  local nodes = {}\n"
  "  for i = #t.nodes, 1, -1 do nodes[#nodes + 1] = t.nodes[i] end\n"
  "  nodes[#nodes + 1] = 'n-extra'\n"
  "  local out = splice_pub(x, t, 5, me, nodes, 98)\n"
  "  local w, werr = decode(out, null, array_mt, D)\n"
  "  want(w ~= nil, 'the spliced publish does not decode: ' .. tostring(werr) .. ': ' .. out)\n"
  "  want(w.ttl == 5 and w.timestamp == 98, 'spliced ttl, timestamp: ' .. out)\n"
  "  want(same_list(w.data.nodes, nodes), 'spliced nodes: ' .. out)\n"
  "  want(#w.route == #r + 1 and w.route[#w.route] == me, 'spliced route: ' .. out)\n"
  "  w.ttl, w.timestamp, w.data.nodes, w.route[#w.route] = v.ttl, v.timestamp, d.nodes, nil\n"
  "  local ok, why = same(v, w, '$')\n"
  "  want(ok, 'the publish splice changed ' .. tostring(why) .. ': ' .. out)\n"
  "end\n"
  "local function check(x, me, peer)\n"
  "  local t = {}\n"
  "  local kind = scan(x, t, me, peer, D)\n"
  "  want(kind == 0 or kind == 1 or kind == 2 or kind == 3, 'unexpected result ' .. tostring(kind))\n"
  "  if kind == 0 then return end\n"
  "  local v, err = decode(x, null, array_mt, D)\n"
  "  want(v ~= nil, 'vouched for a text the decoder refuses: ' .. tostring(err))\n"
  "  want(type(v) == 'table' and type(v.data) == 'table', 'not an envelope with a data object')\n"
  "  want(v.from == nil or type(v.from) == 'string', 'from of another type')\n"
  "  if kind == 3 then return check_publish(x, v, t, me, peer) end\n"
  "  want(v.to == t.to and is_name(v.to, 64) and v.to ~= me, 'to')\n"
  "  if kind == 2 then\n"
  "    want(v.type == 'server_response', 'type (response)')\n"
  "    want(v.reply_to == t.reply_to and is_name(v.reply_to), 'reply_to')\n"
  "    return\n"
  "  end\n"
  "  local d, r = v.data, v.route\n"
  "  want(v.type == 'server_call', 'type (call)')\n"
  "  want(v.id == t.id and is_name(v.id) and v.from == t.from and is_name(v.from, 64), 'id, from')\n"
  "  want(math.type(v.ttl) == 'integer' and v.ttl == t.ttl, 'ttl')\n"
  "  want(math.type(d.timeout_ms) == 'integer' and d.timeout_ms == t.timeout_ms, 'timeout_ms')\n"
  "  want(is_name(d.server) and is_name(d.method) and type(d.args) == 'table', 'server, method, args')\n"
  "  want(type(r) == 'table' and #r == t.nroute, 'route length')\n"
  "  local has = false\n"
  "  for i = 1, #r do want(type(r[i]) == 'string', 'route element'); if r[i] == me then has = true end end\n"
  "  want(has == t.has_me, 'has_me')\n"
  "  want((r[1] == v.from and r[#r] == peer) == t.route_ends, 'route_ends')\n"
  "  if t.nroute == 0 then return end -- never relayed: the route must start at its sender\n"
  "  local out = splice(x, t, 7, me, 1234, 99)\n"
  "  local w, werr = decode(out, null, array_mt, D)\n"
  "  want(w ~= nil, 'the spliced text does not decode: ' .. tostring(werr) .. ': ' .. out)\n"
  "  want(w.ttl == 7 and w.data.timeout_ms == 1234 and w.timestamp == 99, 'spliced fields: ' .. out)\n"
  "  want(#w.route == #r + 1 and w.route[#w.route] == me, 'spliced route: ' .. out)\n"
  "  w.ttl, w.timestamp, w.data.timeout_ms, w.route[#w.route] = v.ttl, v.timestamp, d.timeout_ms, nil\n"
  "  local ok, why = same(v, w, '$')\n"
  "  want(ok, 'the splice changed ' .. tostring(why) .. ': ' .. out)\n"
  "end\n"
  "return function(x)\n"
  "  check(x, 'm', 'p')\n"
  "  check(x, 'bench-relay1', 'bench-caller')\n"
  "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *co;
  if (!L) {
    L = rn_fuzz_state(setup, 1);
    check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  co = lua_newthread(L);
  lua_rawgeti(co, LUA_REGISTRYINDEX, check_ref);
  lua_pushlstring(co, (const char *)data, size);
  if (lua_pcall(co, 1, 0, 0) != LUA_OK)
    rn_fuzz_die(co, "mesh_scan");
  lua_pop(L, 1);
  {
    static unsigned n;
    if (++n % 64 == 0)
      lua_gc(L, LUA_GCCOLLECT);
  }
  return 0;
}
