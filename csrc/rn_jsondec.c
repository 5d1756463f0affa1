/*
 * relaynet core: the JSON decoder behind relaynet.json.
 *
 * A strict RFC 8259 parser: UTF-8 text (checked by the caller), no raw
 * control characters in strings, numbers by the JSON grammar only (no NaN,
 * no hex, no leading zeros), any value at the top level, nothing after it
 * but whitespace. Integers that fit in 64 bits decode as Lua integers;
 * other numbers as floats (beyond the double range: an error), except
 * that an integral float within +-2^53 (1.0, 3e2) becomes an integer too.
 * null is the sentinel the caller passes (relaynet.json.null); an empty
 * array gets the array marker metatable so that it encodes as [] again;
 * duplicate object keys: the last one wins.
 *
 * Errors are returned, not raised. The only allocations are Lua values (and
 * a luaL_Buffer for strings with escapes), so a memory error unwinds without
 * leaking anything.
 */
#include "rn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct rn_jdec {
  const char *s, *p, *e;
  const char *err;
  char errbuf[96];
  size_t errpos; /* 1-based character of the error */
  int max_depth;
  int null_idx, array_mt_idx;
} rn_jdec;

static int rn__jfail(rn_jdec *d, const char *msg, const char *at) {
  d->err = msg;
  d->errpos = (size_t)(at - d->s) + 1;
  return -1;
}

/* The first byte at or after p (before e) that is not JSON white space. */
const char *rn__json_ws(const char *p, const char *e) {
  while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
    p++;
  return p;
}

static void rn__jskip_ws(rn_jdec *d) {
  d->p = rn__json_ws(d->p, d->e);
}

/* Reads the four hex digits of a \u escape at p (before e) into *out: 0, or
 * -1 when there are not four hex digits. */
int rn__json_hex4(const char *p, const char *e, unsigned *out) {
  unsigned v = 0;
  int i;
  if (e - p < 4)
    return -1;
  for (i = 0; i < 4; i++) {
    char c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

/* Drops a decoding buffer on an error path. A luaL_Buffer that has grown
 * past LUAL_BUFFERSIZE keeps its storage in a to-be-closed box on the stack;
 * in Lua 5.4.4 popping that slot with lua_pop/lua_settop runs __close and then
 * sets the top from a pointer taken before the call, which is stale if the
 * call reallocated the stack (heap corruption). luaL_pushresult closes the
 * slot properly and leaves one string, which is then safe to pop. */
static void rn__jbuf_drop(lua_State *L, luaL_Buffer *b) {
  luaL_pushresult(b);
  lua_pop(L, 1);
}

/* Parses the string starting at d->p (on the opening quote) and pushes it. */
static int rn__jdec_string(lua_State *L, rn_jdec *d) {
  const char *start = ++d->p, *q = start;
  luaL_Buffer b;
  /* The common case: no escape, pushed straight from the text. */
  while (q < d->e && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20)
    q++;
  if (q < d->e && *q == '"') {
    lua_pushlstring(L, start, (size_t)(q - start));
    d->p = q + 1;
    return 0;
  }
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, start, (size_t)(q - start));
  while (q < d->e) {
    unsigned char c = (unsigned char)*q;
    if (c == '"') {
      luaL_pushresult(&b);
      d->p = q + 1;
      return 0;
    }
    if (c < 0x20) {
      rn__jbuf_drop(L, &b);
      return rn__jfail(d, "raw control character in a string", q);
    }
    if (c != '\\') {
      luaL_addchar(&b, (char)c);
      q++;
      continue;
    }
    if (q + 1 >= d->e)
      break;
    switch (q[1]) {
    case '"': luaL_addchar(&b, '"'); break;
    case '\\': luaL_addchar(&b, '\\'); break;
    case '/': luaL_addchar(&b, '/'); break;
    case 'b': luaL_addchar(&b, '\b'); break;
    case 'f': luaL_addchar(&b, '\f'); break;
    case 'n': luaL_addchar(&b, '\n'); break;
    case 'r': luaL_addchar(&b, '\r'); break;
    case 't': luaL_addchar(&b, '\t'); break;
    case 'u': {
      unsigned cp, lo;
      char u8[4];
      int n;
      if (rn__json_hex4(q + 2, d->e, &cp) < 0) {
        rn__jbuf_drop(L, &b);
        return rn__jfail(d, "invalid \\u escape in a string", q);
      }
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (d->e - (q + 6) < 6 || q[6] != '\\' || q[7] != 'u' || rn__json_hex4(q + 8, d->e, &lo) < 0 ||
            lo < 0xDC00 || lo > 0xDFFF) {
          rn__jbuf_drop(L, &b);
          return rn__jfail(d, "unpaired surrogate in a \\u escape", q);
        }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        q += 6;
      } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        rn__jbuf_drop(L, &b);
        return rn__jfail(d, "unpaired surrogate in a \\u escape", q);
      }
      if (cp < 0x80) {
        u8[0] = (char)cp; n = 1;
      } else if (cp < 0x800) {
        u8[0] = (char)(0xC0 | (cp >> 6)); u8[1] = (char)(0x80 | (cp & 0x3F)); n = 2;
      } else if (cp < 0x10000) {
        u8[0] = (char)(0xE0 | (cp >> 12)); u8[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u8[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
      } else {
        u8[0] = (char)(0xF0 | (cp >> 18)); u8[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u8[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); u8[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
      }
      luaL_addlstring(&b, u8, (size_t)n);
      q += 6;
      continue;
    }
    default:
      rn__jbuf_drop(L, &b);
      return rn__jfail(d, "invalid escape in a string", q);
    }
    q += 2;
  }
  rn__jbuf_drop(L, &b);
  return rn__jfail(d, "unterminated string", start - 1);
}

static int rn__jdec_number(lua_State *L, rn_jdec *d) {
  const char *p = d->p, *start = d->p;
  int is_int = 1;
  char tmp[64];
  if (p < d->e && *p == '-')
    p++;
  if (p >= d->e || *p < '0' || *p > '9')
    return rn__jfail(d, "invalid number", start);
  if (*p == '0')
    p++;
  else
    while (p < d->e && *p >= '0' && *p <= '9')
      p++;
  if (p < d->e && *p == '.') {
    is_int = 0;
    p++;
    if (p >= d->e || *p < '0' || *p > '9')
      return rn__jfail(d, "invalid number", start);
    while (p < d->e && *p >= '0' && *p <= '9')
      p++;
  }
  if (p < d->e && (*p == 'e' || *p == 'E')) {
    is_int = 0;
    p++;
    if (p < d->e && (*p == '+' || *p == '-'))
      p++;
    if (p >= d->e || *p < '0' || *p > '9')
      return rn__jfail(d, "invalid number", start);
    while (p < d->e && *p >= '0' && *p <= '9')
      p++;
  }
  d->p = p;
  if (is_int && p - start - (*start == '-') <= 19) {
    /* At most 19 digits (plus a sign): accumulate; anything beyond int64 is
     * caught by the overflow check and falls through to a float. */
    const char *q = start;
    int neg = *q == '-';
    unsigned long long v = 0, lim = neg ? 9223372036854775808ULL : 9223372036854775807ULL;
    int ok = 1;
    if (neg)
      q++;
    for (; q < p; q++) {
      unsigned dgt = (unsigned)(*q - '0');
      if (v > (lim - dgt) / 10) {
        ok = 0;
        break;
      }
      v = v * 10 + dgt;
    }
    if (ok) {
      lua_pushinteger(L, neg ? (lua_Integer)(0 - v) : (lua_Integer)v);
      return 0;
    }
  }
  {
    size_t n = (size_t)(p - start);
    double f;
    if (n < sizeof tmp) {
      memcpy(tmp, start, n);
      tmp[n] = 0;
      f = strtod(tmp, NULL);
    } else {
      /* A very long number: strtod on a NUL-terminated copy of all of it. */
      char *big = (char *)malloc(n + 1);
      if (!big)
        return rn__jfail(d, "out of memory", start);
      memcpy(big, start, n);
      big[n] = 0;
      f = strtod(big, NULL);
      free(big);
    }
    /* A number beyond the double range (1e400, -1e400) is refused: an
     * infinity could not be encoded again, so a relay would fail on it
     * later, far from the cause. Underflow (1e-400) is a plain zero. */
    if (f == (double)HUGE_VAL || f == -(double)HUGE_VAL)
      return rn__jfail(d, "number out of range", start);
    if (f >= -9007199254740992.0 && f <= 9007199254740992.0 && f == floor(f))
      lua_pushinteger(L, (lua_Integer)f);
    else
      lua_pushnumber(L, (lua_Number)f);
  }
  return 0;
}

static int rn__jdec_value(lua_State *L, rn_jdec *d, int depth);

static int rn__jdec_container(lua_State *L, rn_jdec *d, int depth) {
  int is_obj = *d->p == '{';
  lua_Integer n = 0;
  if (depth >= d->max_depth) {
    snprintf(d->errbuf, sizeof d->errbuf, "nesting deeper than %d levels", d->max_depth);
    return rn__jfail(d, d->errbuf, d->p);
  }
  if (!lua_checkstack(L, 6))
    return rn__jfail(d, "out of memory", d->p);
  d->p++;
  /* Room for a few members up front: most objects here are small, and
   * growing a table one key at a time rehashes it at 1, 2 and 4 keys. */
  if (is_obj)
    lua_createtable(L, 0, 4);
  else
    lua_createtable(L, 2, 0);
  rn__jskip_ws(d);
  if (d->p < d->e && *d->p == (is_obj ? '}' : ']')) {
    d->p++;
    if (!is_obj) {
      lua_pushvalue(L, d->array_mt_idx);
      lua_setmetatable(L, -2);
    }
    return 0;
  }
  for (;;) {
    rn__jskip_ws(d);
    if (is_obj) {
      if (d->p >= d->e || *d->p != '"')
        return rn__jfail(d, "expected a string key", d->p);
      if (rn__jdec_string(L, d) < 0)
        return -1;
      rn__jskip_ws(d);
      if (d->p >= d->e || *d->p != ':')
        return rn__jfail(d, "expected ':' after a key", d->p);
      d->p++;
      if (rn__jdec_value(L, d, depth + 1) < 0)
        return -1;
      lua_rawset(L, -3);
    } else {
      if (rn__jdec_value(L, d, depth + 1) < 0)
        return -1;
      lua_rawseti(L, -2, ++n);
    }
    rn__jskip_ws(d);
    if (d->p < d->e && *d->p == ',') {
      d->p++;
      continue;
    }
    if (d->p < d->e && *d->p == (is_obj ? '}' : ']')) {
      d->p++;
      return 0;
    }
    return rn__jfail(d, is_obj ? "expected ',' or '}'" : "expected ',' or ']'", d->p);
  }
}

static int rn__jdec_value(lua_State *L, rn_jdec *d, int depth) {
  rn__jskip_ws(d);
  if (d->p >= d->e)
    return rn__jfail(d, "expected a value but the text ended", d->p);
  switch (*d->p) {
  case '{':
  case '[':
    return rn__jdec_container(L, d, depth);
  case '"':
    return rn__jdec_string(L, d);
  case 't':
    if (d->e - d->p >= 4 && memcmp(d->p, "true", 4) == 0) {
      d->p += 4;
      lua_pushboolean(L, 1);
      return 0;
    }
    break;
  case 'f':
    if (d->e - d->p >= 5 && memcmp(d->p, "false", 5) == 0) {
      d->p += 5;
      lua_pushboolean(L, 0);
      return 0;
    }
    break;
  case 'n':
    if (d->e - d->p >= 4 && memcmp(d->p, "null", 4) == 0) {
      d->p += 4;
      lua_pushvalue(L, d->null_idx);
      return 0;
    }
    break;
  default:
    if (*d->p == '-' || (*d->p >= '0' && *d->p <= '9'))
      return rn__jdec_number(L, d);
    break;
  }
  return rn__jfail(d, "expected a value", d->p);
}

/* core.json_decode(text, null, array_mt, max_depth) -> value | nil, message */
int rn__json_decode(lua_State *L) {
  rn_jdec d;
  size_t len;
  memset(&d, 0, sizeof d);
  d.s = luaL_checklstring(L, 1, &len);
  d.p = d.s;
  d.e = d.s + len;
  d.max_depth = (int)luaL_checkinteger(L, 4);
  if (d.max_depth > RN_JSON_DEPTH_CAP) /* both recurse on the C stack */
    d.max_depth = RN_JSON_DEPTH_CAP;
  d.null_idx = 2;
  d.array_mt_idx = 3;
  lua_settop(L, 4);
  if (rn__utf8_check((const unsigned char *)d.s, len) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "the text is not valid UTF-8");
    return 2;
  }
  if (rn__jdec_value(L, &d, 0) == 0) {
    rn__jskip_ws(&d);
    if (d.p == d.e)
      return 1;
    rn__jfail(&d, "unexpected text after the value", d.p);
  }
  lua_settop(L, 4);
  lua_pushnil(L);
  lua_pushfstring(L, "%s at character %I", d.err, (lua_Integer)d.errpos);
  return 2;
}
