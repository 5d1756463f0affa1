/* Shared set-up for the harnesses that drive relaynet.core through Lua: one
 * lua_State per process with the standard libraries, relaynet.core opened
 * from the linked-in csrc/ (luaopen_relaynet_core) and package.path pointing
 * at the repository's lua/ directory. */
#ifndef RN_FUZZ_LUA_H
#define RN_FUZZ_LUA_H

#include <stdio.h>
#include <stdlib.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#ifndef RN_REPO
#define RN_REPO "."
#endif

int luaopen_relaynet_core(lua_State *L);

/* Aborts (a finding) with the message on top of the stack. */
static void rn_fuzz_die(lua_State *L, const char *what) {
  fprintf(stderr, "fuzz: %s: %s\n", what, lua_tostring(L, -1));
  abort();
}

/* Creates the state and runs `setup` (Lua source) in it; the chunk's return
 * values are left on the stack. */
static lua_State *rn_fuzz_state(const char *setup, int nresults) {
  lua_State *L = luaL_newstate();
  if (!L)
    abort();
  luaL_openlibs(L);
  luaL_requiref(L, "relaynet.core", luaopen_relaynet_core, 0);
  lua_pop(L, 1);
  lua_getglobal(L, "package");
  lua_pushstring(L, RN_REPO "/lua/?.lua;" RN_REPO "/lua/?/init.lua;/usr/share/lua/5.4/?.lua;"
                    "/usr/share/lua/5.4/?/init.lua");
  lua_setfield(L, -2, "path");
  lua_pushliteral(L, ""); /* no C modules: they are built for the system liblua */
  lua_setfield(L, -2, "cpath");
  lua_pop(L, 1);
  /* relaynet.json's null: cjson.null, the NULL light userdata. */
  lua_pushlightuserdata(L, NULL);
  lua_setglobal(L, "JSON_NULL");
  if (luaL_loadstring(L, setup) != LUA_OK || lua_pcall(L, 0, nresults, 0) != LUA_OK)
    rn_fuzz_die(L, "set-up");
  return L;
}

#endif
