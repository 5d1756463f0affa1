/*
 * relaynet core: the module entry point (luaopen_relaynet_core) and the
 * event kinds as Lua constants.
 *
 * core's functions come from the file of their concept: the loop
 * (rn_loop.c), connections (rn_conn.c), servers and requests (rn_server.c,
 * rn_http.c), clients and DNS (rn_client.c), JSON (rn_json.c).
 */
#include "rn.h"

#include <string.h>

/* core.versions() -> libwebsockets, libuv. lws appends "-" and its build
 * hash, which Debian's package leaves empty ("4.1.6-"): a dangling "-" or
 * space is dropped. */
static int rn_version(lua_State *L) {
  const char *v = lws_get_library_version();
  size_t n = strlen(v);
  while (n > 0 && (v[n - 1] == '-' || v[n - 1] == ' '))
    n--;
  lua_pushlstring(L, v, n);
  lua_pushstring(L, uv_version_string());
  return 2;
}

int luaopen_relaynet_core(lua_State *L) {
  rn__loop_anchor(L);
  lua_newtable(L);
  lua_pushcfunction(L, rn_version);
  lua_setfield(L, -2, "versions");
  rn__log_open_lua(L);
  rn__loop_open_lua(L);
  rn__conn_open_lua(L);
  rn__server_open_lua(L);
  rn__client_open_lua(L);
  rn__json_open_lua(L);
  rn__crypto_open_lua(L);
  /* core.EV_HTTP, core.EV_OPEN, ...: the event kinds dispatch receives. */
#define RN__EV_CONST(name, doc)      \
  lua_pushinteger(L, RN_EV_##name); \
  lua_setfield(L, -2, "EV_" #name);
  RN_EVENT_KINDS(RN__EV_CONST)
#undef RN__EV_CONST
  return 1;
}
