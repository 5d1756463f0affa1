/*
 * relaynet core: the JSON encoder behind relaynet.json (the decoder is
 * rn_jsondec.c).
 *
 * It produces exactly what the Lua encoder it replaced produced (the specs
 * pin that output): integers printed exactly, integral floats within +-2^53
 * as integers, other floats in the shortest of %.15g/%.16g/%.17g that reads
 * back as the same value, object keys sorted bytewise (number keys by their
 * printed form), control characters and DEL escaped, other bytes as they
 * are. An empty table is {} unless its metatable is the array marker.
 * Tables are read raw (lua_next, lua_rawget, lua_rawlen): metamethods such
 * as __index, __pairs and __len are not consulted, so a proxy table encodes
 * as what it holds itself. That is what makes the traversal safe (no Lua
 * code runs while keys are being walked).
 *
 * Errors never unwind through the encoder: it returns them, so the output
 * buffer (plain malloc'd memory) is always freed. Nothing it calls on the
 * Lua side allocates (lua_next, lua_rawget, lua_rawlen, lua_tolstring on
 * string values only), so no memory error can be raised half-way either.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rn.h"

typedef struct rn_jbuf {
  char *p;
  size_t len, cap;
  const char *err; /* a static message, or NULL */
  char errbuf[96];
  int max_depth;
  int null_idx, array_mt_idx;    /* stack indexes of json.null and the array marker */
  const void *stack[64];         /* tables being encoded (cycle check) */
} rn_jbuf;

static int rn__jgrow(rn_jbuf *b, size_t more) {
  size_t need = b->len + more, cap;
  char *n;
  if (need <= b->cap)
    return 0;
  cap = b->cap ? b->cap : 256;
  while (cap < need)
    cap *= 2;
  n = (char *)realloc(b->p, cap);
  if (!n) {
    b->err = "out of memory";
    return -1;
  }
  b->p = n;
  b->cap = cap;
  return 0;
}

static int rn__jput(rn_jbuf *b, const char *s, size_t n) {
  if (rn__jgrow(b, n) < 0)
    return -1;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  return 0;
}

static int rn__jstring(rn_jbuf *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  size_t i, run = 0;
  /* worst case: every byte becomes \u00XX */
  if (rn__jgrow(b, n * 6 + 2) < 0)
    return -1;
  b->p[b->len++] = '"';
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    const char *esc = NULL;
    if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f)
      continue;
    memcpy(b->p + b->len, s + run, i - run);
    b->len += i - run;
    run = i + 1;
    switch (c) {
    case '"': esc = "\\\""; break;
    case '\\': esc = "\\\\"; break;
    case '\b': esc = "\\b"; break;
    case '\f': esc = "\\f"; break;
    case '\n': esc = "\\n"; break;
    case '\r': esc = "\\r"; break;
    case '\t': esc = "\\t"; break;
    default: break;
    }
    if (esc) {
      memcpy(b->p + b->len, esc, 2);
      b->len += 2;
    } else {
      char *o = b->p + b->len;
      o[0] = '\\'; o[1] = 'u'; o[2] = '0'; o[3] = '0';
      o[4] = hex[c >> 4];
      o[5] = hex[c & 15];
      b->len += 6;
    }
  }
  memcpy(b->p + b->len, s + run, n - run);
  b->len += n - run;
  b->p[b->len++] = '"';
  return 0;
}

/* Prints an integer in decimal into out (>= 21 bytes); returns its length. */
static int rn__jinteger_text(lua_Integer i, char *out) {
  char tmp[24];
  int n = 0, len = 0;
  unsigned long long v = i < 0 ? 0ULL - (unsigned long long)i : (unsigned long long)i;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  if (i < 0)
    out[len++] = '-';
  while (n)
    out[len++] = tmp[--n];
  return len;
}

/* Prints a number the way relaynet.json always has into out (>= 32 bytes);
 * returns its length, or -1 for NaN and infinities. */
static int rn__jnumber_text(lua_State *L, int idx, char *out) {
  lua_Number f;
  int digits;
  if (lua_isinteger(L, idx))
    return rn__jinteger_text(lua_tointeger(L, idx), out);
  f = lua_tonumber(L, idx);
  if (f != f || f == (lua_Number)HUGE_VAL || f == -(lua_Number)HUGE_VAL)
    return -1;
  if (f >= -9007199254740992.0 && f <= 9007199254740992.0 && f == floor(f))
    return rn__jinteger_text((lua_Integer)f, out);
  for (digits = 15; digits <= 16; digits++) {
    int n = snprintf(out, 32, "%.*g", digits, (double)f);
    if (strtod(out, NULL) == (double)f)
      return n;
  }
  return snprintf(out, 32, "%.17g", (double)f);
}

static int rn__jvalue(lua_State *L, rn_jbuf *b, int idx, int depth);

typedef struct rn_jkey {
  const char *s; /* a string key's text; NULL for a number key (see num) */
  size_t len;
  int slot;      /* stack slot holding the key itself */
  char num[32];  /* the printed form of a number key */
} rn_jkey;

#define RN_JKEY_TEXT(k) ((k)->s ? (k)->s : (k)->num)

static int rn__jkey_cmp(const void *pa, const void *pb) {
  const rn_jkey *a = (const rn_jkey *)pa, *b = (const rn_jkey *)pb;
  size_t n = a->len < b->len ? a->len : b->len;
  int c = memcmp(RN_JKEY_TEXT(a), RN_JKEY_TEXT(b), n);
  if (c)
    return c;
  return a->len < b->len ? -1 : a->len > b->len;
}

/* Is the table at idx an array (all keys 1..n), and its length. */
static int rn__jis_array(lua_State *L, rn_jbuf *b, int idx, lua_Integer *len) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0;
  int marked = 0;
  if (lua_getmetatable(L, idx)) {
    marked = lua_rawequal(L, -1, b->array_mt_idx);
    lua_pop(L, 1);
  }
  *len = n;
  if (marked)
    return 1;
  if (n == 0)
    return 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_Integer k;
    lua_pop(L, 1);
    /* Lua stores integral float keys as integers: a float key is never 1..n. */
    k = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
    if (k < 1 || k > n) {
      lua_pop(L, 1);
      return 0;
    }
    count++;
  }
  return count == n;
}

static int rn__jtable(lua_State *L, rn_jbuf *b, int idx, int depth) {
  lua_Integer n, i;
  const void *self = lua_topointer(L, idx);
  int d;
  if (depth > b->max_depth) {
    snprintf(b->errbuf, sizeof b->errbuf, "nesting deeper than %d", b->max_depth);
    b->err = b->errbuf;
    return -1;
  }
  for (d = 0; d < depth && d < 64; d++)
    if (b->stack[d] == self) {
      b->err = "cannot encode a table that contains itself";
      return -1;
    }
  if (depth < 64)
    b->stack[depth] = self;
  if (!lua_checkstack(L, 4)) {
    b->err = "out of memory";
    return -1;
  }
  if (rn__jis_array(L, b, idx, &n)) {
    if (rn__jput(b, "[", 1) < 0)
      return -1;
    for (i = 1; i <= n; i++) {
      if (i > 1 && rn__jput(b, ",", 1) < 0)
        return -1;
      lua_rawgeti(L, idx, i);
      if (rn__jvalue(L, b, lua_gettop(L), depth + 1) < 0)
        return -1;
      lua_pop(L, 1);
    }
    return rn__jput(b, "]", 1);
  } else {
    /* Park a copy of every key on the stack, sort the keys by their text,
     * then read each value with its own key. Nothing here allocates Lua
     * memory, so the traversal is never disturbed by a collection. */
    rn_jkey small[16], *keys = small;
    size_t nk = 0, cap = 16, k;
    int base = lua_gettop(L), rc = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      int kt = lua_type(L, -2);
      lua_pop(L, 1);
      if (kt != LUA_TSTRING && kt != LUA_TNUMBER) {
        snprintf(b->errbuf, sizeof b->errbuf, "cannot encode a table key of type %s", lua_typename(L, kt));
        b->err = b->errbuf;
        rc = -1;
        break;
      }
      if (nk == cap) {
        rn_jkey *nkeys = (rn_jkey *)malloc(cap * 2 * sizeof *nkeys);
        if (!nkeys) {
          b->err = "out of memory";
          rc = -1;
          break;
        }
        memcpy(nkeys, keys, nk * sizeof *keys);
        if (keys != small)
          free(keys);
        keys = nkeys;
        cap *= 2;
      }
      if (!lua_checkstack(L, 4)) {
        /* Every key is parked on the Lua stack (at most ~1,000,000 slots). */
        b->err = "cannot encode an object with this many keys (the limit is about 1,000,000)";
        rc = -1;
        break;
      }
      /* [parked keys..., key] -> [parked keys..., key, key]: the lower copy
       * stays parked, the top one continues the traversal. */
      lua_pushvalue(L, -1);
      keys[nk].slot = lua_gettop(L) - 1;
      if (kt == LUA_TSTRING) {
        keys[nk].s = lua_tolstring(L, -1, &keys[nk].len);
      } else {
        /* Integer keys print exactly, float keys with %.17g (an integral
         * float key is stored as an integer by Lua). */
        int len = lua_isinteger(L, -1)
          ? rn__jinteger_text(lua_tointeger(L, -1), keys[nk].num)
          : snprintf(keys[nk].num, sizeof keys[nk].num, "%.17g", (double)lua_tonumber(L, -1));
        keys[nk].s = NULL;
        keys[nk].len = (size_t)len;
      }
      nk++;
    }
    if (rc == 0) {
      if (nk <= 16) {
        /* Objects are small: an insertion sort beats qsort's set-up. */
        size_t i2, j;
        for (i2 = 1; i2 < nk; i2++) {
          rn_jkey t = keys[i2];
          for (j = i2; j > 0 && rn__jkey_cmp(&keys[j - 1], &t) > 0; j--)
            keys[j] = keys[j - 1];
          keys[j] = t;
        }
      } else {
        qsort(keys, nk, sizeof *keys, rn__jkey_cmp);
      }
      /* Sorted keys with the same text are a number key and a string key
       * that print alike ({[1] = .., ["1"] = ..}): JSON would hold the key
       * twice, and a reader would keep only one of the values. */
      for (k = 1; k < nk; k++)
        if (rn__jkey_cmp(&keys[k - 1], &keys[k]) == 0) {
          /* A number key's text is not NUL-terminated: print by length. */
          snprintf(b->errbuf, sizeof b->errbuf, "cannot encode a table with the key \"%.*s\" both as a number and as a string",
                   (int)(keys[k].len < 24 ? keys[k].len : 24), RN_JKEY_TEXT(&keys[k]));
          b->err = b->errbuf;
          rc = -1;
          break;
        }
      if (rc == 0)
        rc = rn__jput(b, "{", 1);
      for (k = 0; rc == 0 && k < nk; k++) {
        if ((k > 0 && rn__jput(b, ",", 1) < 0) || rn__jstring(b, RN_JKEY_TEXT(&keys[k]), keys[k].len) < 0 ||
            rn__jput(b, ":", 1) < 0) {
          rc = -1;
          break;
        }
        lua_pushvalue(L, keys[k].slot);
        lua_rawget(L, idx);
        rc = rn__jvalue(L, b, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
      }
      if (rc == 0)
        rc = rn__jput(b, "}", 1);
    }
    lua_settop(L, base);
    if (keys != small)
      free(keys);
    return rc;
  }
}

static int rn__jvalue(lua_State *L, rn_jbuf *b, int idx, int depth) {
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    return rn__jstring(b, s, n);
  }
  case LUA_TNUMBER: {
    char num[32];
    int n = rn__jnumber_text(L, idx, num);
    if (n < 0) {
      b->err = "cannot encode NaN or infinity";
      return -1;
    }
    return rn__jput(b, num, (size_t)n);
  }
  case LUA_TBOOLEAN:
    return lua_toboolean(L, idx) ? rn__jput(b, "true", 4) : rn__jput(b, "false", 5);
  case LUA_TNIL:
    return rn__jput(b, "null", 4);
  case LUA_TTABLE:
    return rn__jtable(L, b, idx, depth);
  default:
    if (lua_rawequal(L, idx, b->null_idx))
      return rn__jput(b, "null", 4);
    snprintf(b->errbuf, sizeof b->errbuf, "cannot encode a value of type %s", luaL_typename(L, idx));
    b->err = b->errbuf;
    return -1;
  }
}

/* core.json_encode(value, null, array_mt, max_depth) -> text | nil, message */
static int rn_json_encode(lua_State *L) {
  rn_jbuf b;
  int rc;
  memset(&b, 0, sizeof b);
  b.max_depth = (int)luaL_checkinteger(L, 4);
  if (b.max_depth > RN_JSON_DEPTH_CAP)
    b.max_depth = RN_JSON_DEPTH_CAP;
  b.null_idx = 2;
  b.array_mt_idx = 3;
  lua_settop(L, 4);
  rc = rn__jvalue(L, &b, 1, 0);
  if (rc < 0) {
    free(b.p);
    lua_pushnil(L);
    lua_pushstring(L, b.err ? b.err : "cannot encode");
    return 2;
  }
  lua_pushlstring(L, b.p, b.len);
  free(b.p);
  return 1;
}

void rn__json_open_lua(lua_State *L) {
  lua_pushcfunction(L, rn_json_encode);
  lua_setfield(L, -2, "json_encode");
  lua_pushcfunction(L, rn__json_decode);
  lua_setfield(L, -2, "json_decode");
  rn__jsonscan_open_lua(L);
}
