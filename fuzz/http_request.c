/* libFuzzer harness: the HTTP request path as far as it is ours, after
 * libwebsockets has parsed the request: the Lua router and query parsing
 * (lua/relaynet/http.lua: parse_args, match, static_path) and the JSON-RPC
 * entry point that POST /rpc and WebSocket /rpc feed (lua/relaynet/jsonrpc.lua
 * handle: size check, decode, raw-id scan, batch and request checks, method
 * dispatch, response encoding), with relaynet.core (every csrc file) linked in.
 *
 * The C side of the request (the request line, headers, percent-decoding and
 * body framing) is parsed by libwebsockets; what csrc/rn_server.c adds there
 * (the Content-Length digits, copying the query pieces and headers through
 * the lws accessors, body accumulation) reads a live lws connection and is
 * exercised over real sockets by spec/attack_http_spec.lua, not here.
 *
 * Input: byte 0 = flags (bit 0: a WebSocket caller (ctx.owner) rather than
 * HTTP; bits 1-3: the method); then the path up to the first '\n', the raw
 * query (lws's form: "k=v" pieces separated by NUL) up to the next '\n', and
 * the body.
 *
 * Checked: nothing raises; parse_args gives a table and a string; match gives
 * a handler or 404/405; static_path never leaves its folder (no ".." segment,
 * no NUL, under the folder); jsonrpc.handle returns nil or JSON text that
 * decodes to a response object or a non-empty array of them, each with
 * jsonrpc "2.0", an id member, exactly one of result/error, an integer error
 * code and a string message, never -32603 (internal error: the stand-in mesh
 * below never fails), and the id of a single request echoed as sent. */
#include <stdint.h>
#include <string.h>
#include "fuzz_lua.h"

static lua_State *L;
static int check_ref;

static int fake_cjson(lua_State *l) {
  lua_createtable(l, 0, 1);
  lua_pushlightuserdata(l, NULL); /* cjson.null is the NULL light userdata */
  lua_setfield(l, -2, "null");
  return 1;
}

static const char setup[] =
  "local http = require('relaynet.http')\n"
  "local jsonrpc = require('relaynet.jsonrpc')\n"
  "local json = require('relaynet.json')\n"
  "local core = require('relaynet.core')\n"
  "-- A stand-in mesh: every call succeeds at once with a copy of what it got.\n"
  "jsonrpc.mesh = {\n"
  "  node_id = function() return 'fuzz-node' end,\n"
  "  remote_call = function(node, server, method, args, timeout)\n"
  "    return { node = node, server = server, method = method, args = args }\n"
  "  end,\n"
  "  status = function() return { node_id = 'fuzz-node' } end,\n"
  "  registry = function() return {} end, peers = function() return json.array() end,\n"
  "  routes = function() return {} end,\n"
  "}\n"
  "local routes = http.new_routes()\n"
  "local h = function() end\n"
  "http.add_route(routes, 'GET', '/', h); http.add_route(routes, 'POST', '/rpc', h)\n"
  "http.add_route(routes, 'GET', '/static/*', h); http.add_route(routes, '*', '/any', h)\n"
  "http.add_route(routes, 'GET', '/a/*', h); http.add_route(routes, 'PUT', '/a/b/*', h)\n"
  "local METHODS = { 'GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD', 'CONNECT' }\n"
  "local function check_response(r, single_id)\n"
  "  assert(type(r) == 'table' and r.jsonrpc == '2.0', 'not a 2.0 response')\n"
  "  assert(rawget(r, 'id') ~= nil, 'response without an id member')\n"
  "  assert((r.result ~= nil) ~= (r.error ~= nil), 'not exactly one of result and error')\n"
  "  if r.error then\n"
  "    assert(math.type(r.error.code) == 'integer', 'error code not an integer')\n"
  "    assert(type(r.error.message) == 'string', 'error message not a string')\n"
  "    assert(r.error.code ~= -32603, 'internal error: ' .. r.error.message)\n"
  "  end\n"
  "  if single_id ~= nil then\n"
  "    assert(r.id == single_id or (r.id ~= r.id and single_id ~= single_id),\n"
  "      'id not echoed: sent ' .. tostring(single_id) .. ', got ' .. tostring(r.id))\n"
  "  end\n"
  "end\n"
  "return function(flags, path, query, body)\n"
  "  local method = METHODS[((flags >> 1) & 7) + 1]\n"
  "  local args, text = http.parse_args(query .. '\\0')\n"
  "  assert(type(args) == 'table' and type(text) == 'string')\n"
  "  local handler, status = http.match(routes, method, path)\n"
  "  assert(handler or status == 404 or status == 405, 'match')\n"
  "  if path:sub(1, 8) == '/static/' then\n"
  "    local f = http.static_path('/srv/www', '/static/', path)\n"
  "    if f then\n"
  "      assert(f:sub(1, 9) == '/srv/www/', 'static path outside its folder: ' .. f)\n"
  "      assert(not f:find('%z'), 'NUL in a static path')\n"
  "      for seg in f:gmatch('[^/]+') do assert(seg ~= '..', 'dot-dot in a static path') end\n"
  "    end\n"
  "  end\n"
  "  local ctx = (flags & 1) == 1 and { owner = { n = 0 } } or nil\n"
  "  local out = jsonrpc.handle(body, ctx)\n"
  "  if out == nil then return end\n"
  "  assert(type(out) == 'string', 'handle returned a ' .. type(out))\n"
  "  local resp, err = core.json_decode(out, json.null, getmetatable(json.array()), 1000)\n"
  "  assert(resp ~= nil, 'response is not JSON: ' .. tostring(err) .. ': ' .. out)\n"
  "  local req = json.decode(body)\n"
  "  if type(req) == 'table' and req[1] == nil and getmetatable(req) == nil and resp.jsonrpc then\n"
  "    local id = rawget(req, 'id')\n"
  "    if type(id) ~= 'number' and type(id) ~= 'string' then id = nil end\n"
  "    check_response(resp, id)\n"
  "  elseif resp.jsonrpc then\n"
  "    check_response(resp)\n"
  "  else\n"
  "    assert(#resp > 0, 'an empty batch response')\n"
  "    for i = 1, #resp do check_response(resp[i]) end\n"
  "  end\n"
  "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *p, *e, *nl1, *nl2;
  lua_State *co;
  if (!L) {
    L = rn_fuzz_state("", 0);
    /* relaynet.json takes only cjson.null from lua-cjson, a C module built
     * for the system liblua: a stand-in with the same null avoids loading a
     * second Lua into this (sanitized, static) one. */
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, fake_cjson);
    lua_setfield(L, -2, "cjson.safe");
    lua_pop(L, 1);
    if (luaL_loadstring(L, setup) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK)
      rn_fuzz_die(L, "http_request set-up");
    check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  if (size == 0)
    return 0;
  p = (const char *)data + 1;
  e = (const char *)data + size;
  nl1 = memchr(p, '\n', (size_t)(e - p));
  if (!nl1)
    nl1 = e;
  nl2 = nl1 < e ? memchr(nl1 + 1, '\n', (size_t)(e - nl1 - 1)) : NULL;
  if (!nl2)
    nl2 = e;
  co = lua_newthread(L);
  lua_rawgeti(co, LUA_REGISTRYINDEX, check_ref);
  lua_pushinteger(co, data[0]);
  lua_pushlstring(co, p, (size_t)(nl1 - p));
  lua_pushlstring(co, nl1 < e ? nl1 + 1 : e, nl1 < e ? (size_t)(nl2 - nl1 - 1) : 0);
  lua_pushlstring(co, nl2 < e ? nl2 + 1 : e, nl2 < e ? (size_t)(e - nl2 - 1) : 0);
  if (lua_pcall(co, 4, 0, 0) != LUA_OK)
    rn_fuzz_die(co, "http_request");
  lua_pop(L, 1);
  {
    static unsigned n;
    if (++n % 64 == 0)
      lua_gc(L, LUA_GCCOLLECT);
  }
  return 0;
}
