/*
 * relaynet core: the per-server (and per-client) limits: the built-in
 * defaults, the RELAYNET_LIMITS override, and reading them from a Lua
 * options table. Every limit a user can set is listed once, in
 * rn__limit_descs.
 */
#include "rn.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
/* The built-in defaults. The RELAYNET_LIMITS environment variable
 * ("name=value,name=value") overrides them for every server and client of
 * the process (see rn__limits_base); Lua options override both. */
const rn_limits rn__default_limits = {
  1 << 20,       /* max_message */
  1 << 20,       /* max_body */
  4 << 20,       /* send_queue */
  1 << 20,       /* send_high_water */
  30.0,          /* slow_timeout */
  10000,         /* max_connections */
  30,            /* ping_interval */
  60,            /* pong_timeout */
  1024,          /* rx_buffer */
  30.0,          /* body_timeout */
  1024,          /* body_min_rate */
  256,           /* max_connections_per_ip */
  1000,          /* ws_msg_rate */
  2000,          /* ws_msg_burst */
  4 << 20,       /* ws_byte_rate */
  8 << 20,       /* ws_byte_burst */
  64 << 20       /* max_buffered */
};

/* The Lua-visible limits: name, kind and where each lives in rn_limits.
 * Kinds: 'z' size_t, 'i' int, 'd' double (seconds). 'O' marks a bound that
 * 0 or false switches off; the others must be positive where noted below. */
typedef struct rn_limit_desc {
  const char *name;
  char kind;
  char off_ok; /* false is accepted as 0 */
  size_t offset;
} rn_limit_desc;

static const rn_limit_desc rn__limit_descs[] = {
  {"max_message", 'z', 0, offsetof(rn_limits, max_message)},
  {"max_body", 'z', 0, offsetof(rn_limits, max_body)},
  {"send_queue", 'z', 0, offsetof(rn_limits, send_queue)},
  {"send_high_water", 'z', 0, offsetof(rn_limits, send_high_water)},
  {"slow_timeout", 'd', 0, offsetof(rn_limits, slow_timeout)},
  {"max_connections", 'i', 0, offsetof(rn_limits, max_connections)},
  {"ping_interval", 'i', 0, offsetof(rn_limits, ping_interval)},
  {"pong_timeout", 'i', 0, offsetof(rn_limits, pong_timeout)},
  {"rx_buffer", 'z', 0, offsetof(rn_limits, rx_buffer)},
  {"body_timeout", 'd', 1, offsetof(rn_limits, body_timeout)},
  {"body_min_rate", 'z', 1, offsetof(rn_limits, body_min_rate)},
  {"max_connections_per_ip", 'i', 1, offsetof(rn_limits, max_connections_per_ip)},
  {"ws_msg_rate", 'z', 1, offsetof(rn_limits, ws_msg_rate)},
  {"ws_msg_burst", 'z', 0, offsetof(rn_limits, ws_msg_burst)},
  {"ws_byte_rate", 'z', 1, offsetof(rn_limits, ws_byte_rate)},
  {"ws_byte_burst", 'z', 0, offsetof(rn_limits, ws_byte_burst)},
  {"max_buffered", 'z', 1, offsetof(rn_limits, max_buffered)},
  {NULL, 0, 0, 0}};

/* Stores v in the field d describes; returns NULL, or what is wrong. */
static const char *rn__limit_set(rn_limits *lim, const rn_limit_desc *d, double v) {
  char *p = (char *)lim + d->offset;
  if (d->kind == 'd') {
    if (!(v >= 0) || (v == 0 && !d->off_ok) || v > 1e9)
      return d->off_ok ? "must be a non-negative number" : "must be a positive number";
    *(double *)p = v;
    return NULL;
  }
  if (!(v >= 0) || v != (double)(long long)v || v > 9.0e15)
    return "must be a non-negative integer";
  if (!strcmp(d->name, "ping_interval") || !strcmp(d->name, "pong_timeout"))
    v = v > 65535 ? 65535 : v;
  else if (!strcmp(d->name, "rx_buffer"))
    v = v < 128 ? 128 : v;
  if (d->kind == 'i')
    *(int *)p = v > 2147483647.0 ? 2147483647 : (int)v;
  else
    *(size_t *)p = (size_t)v;
  return NULL;
}

/* Keeps related limits consistent. */
static void rn__limits_fix(rn_limits *lim) {
  if (lim->send_high_water > lim->send_queue)
    lim->send_high_water = lim->send_queue;
  /* A bucket must hold at least one message, and the byte bucket one
   * message of the largest size allowed. */
  if (lim->ws_msg_burst < 1)
    lim->ws_msg_burst = 1;
  if (lim->ws_byte_burst < lim->max_message)
    lim->ws_byte_burst = lim->max_message;
}

static rn_limits rn__base_limits;
static int rn__base_ready;

/* The defaults in effect: the built-in ones overridden by RELAYNET_LIMITS
 * (read once per process). Raises on an unknown name or a bad value. */
static const rn_limits *rn__limits_base(lua_State *L) {
  const char *env;
  rn_limits lim;
  char buf[1024], *tok, *save = NULL;
  if (rn__base_ready)
    return &rn__base_limits;
  lim = rn__default_limits;
  env = getenv("RELAYNET_LIMITS");
  if (env && *env) {
    if (strlen(env) >= sizeof buf)
      luaL_error(L, "RELAYNET_LIMITS is longer than %d bytes", (int)sizeof buf - 1);
    strcpy(buf, env);
    for (tok = strtok_r(buf, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
      const rn_limit_desc *d;
      char *eq = strchr(tok, '='), *end;
      const char *bad;
      double v;
      if (!eq)
        luaL_error(L, "RELAYNET_LIMITS: expected name=value, got '%s'", tok);
      *eq = '\0';
      for (d = rn__limit_descs; d->name && strcmp(d->name, tok); d++)
        ;
      if (!d->name)
        luaL_error(L, "RELAYNET_LIMITS: unknown limit '%s'", tok);
      v = strtod(eq + 1, &end);
      if (end == eq + 1 || *end)
        luaL_error(L, "RELAYNET_LIMITS: limit '%s' needs a number", tok);
      if ((bad = rn__limit_set(&lim, d, v)) != NULL)
        luaL_error(L, "RELAYNET_LIMITS: limit '%s' %s", tok, bad);
    }
  }
  rn__limits_fix(&lim);
  rn__base_limits = lim;
  rn__base_ready = 1;
  return &rn__base_limits;
}

/* Copies Lua-visible limits from a table at idx into lim (missing fields
 * keep their defaults). Raises on a wrong type or an out-of-range value.
 * Bounds that can be switched off take 0 or false. */
void rn__limits_from_table(lua_State *L, int idx, rn_limits *lim) {
  const rn_limit_desc *d;
  *lim = *rn__limits_base(L);
  if (lua_isnoneornil(L, idx))
    return;
  for (d = rn__limit_descs; d->name; d++) {
    const char *bad;
    double v;
    int isnum;
    lua_getfield(L, idx, d->name);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      continue;
    }
    if (d->off_ok && lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
      v = 0;
    } else {
      v = (double)lua_tonumberx(L, -1, &isnum);
      if (!isnum)
        v = -1;
    }
    lua_pop(L, 1);
    if ((bad = rn__limit_set(lim, d, v)) != NULL)
      luaL_error(L, "limit '%s' %s", d->name, bad);
  }
  rn__limits_fix(lim);
}

/* Pushes the default limits in effect as a table (for documentation and
 * tests): the built-in ones, or RELAYNET_LIMITS's where it sets them. */
int rn__limits_defaults(lua_State *L) {
  const rn_limits *b = rn__limits_base(L);
  const rn_limit_desc *d;
  lua_createtable(L, 0, 18);
  for (d = rn__limit_descs; d->name; d++) {
    const char *p = (const char *)b + d->offset;
    if (d->kind == 'd')
      lua_pushnumber(L, *(const double *)p);
    else if (d->kind == 'i')
      lua_pushinteger(L, *(const int *)p);
    else
      lua_pushinteger(L, (lua_Integer) * (const size_t *)p);
    lua_setfield(L, -2, d->name);
  }
  return 1;
}
