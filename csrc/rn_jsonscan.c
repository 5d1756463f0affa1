/*
 * relaynet core: the mesh envelope scanner and the text splices behind the
 * relay fast path (lua/relaynet/mesh/calls.lua relay_text, pubsub.lua
 * relay_text; docs/DESIGN.md "Relaying without decoding").
 *
 * core.mesh_scan(text, t, me, peer, max_depth) -> 0 | 1 | 2 | 3
 *   Reads a mesh envelope without building Lua values for it. It checks the
 *   whole text with the decoder's grammar (csrc/rn_jsondec.c: UTF-8,
 *   strings and their escapes, the number grammar and range, at most
 *   max_depth levels of nesting, nothing after the value) and returns
 *     1  for a server_call that is not for node `me` and has the shape
 *        mesh/calls.lua's valid_call checks (id, from, to names; an integer
 *        ttl; a route of strings; data an object with server and method
 *        names, args an array or object, an integer timeout_ms); t gets
 *        id, from, to, ttl, timeout_ms, nroute, has_me (me is on the
 *        route) and route_ends (the route starts at `from` and ends at
 *        `peer`), and t[1..8] the byte spans mesh_splice_call rewrites;
 *     2  for a server_response that is not for `me` (reply_to and to names,
 *        data an object); t gets to and reply_to;
 *     3  for a publish that does not list `me` in data.nodes and has the
 *        shape mesh/pubsub.lua's valid() checks, its mesh_config bounds
 *        aside (id, from, data.run names; integer ttl and data.seq; a
 *        route and a data.nodes of 1..8192 strings without escapes; a
 *        data.topic string without escapes; exactly one of data.text and
 *        data.json, a string (escapes allowed: the message is never read);
 *        data.epoch and data.offset both absent, or a name and an
 *        integer); t gets from, ttl, nroute, has_me, route_ends,
 *        topic_len (the topic's bytes), nodes and route (new lists of the
 *        strings), and t[1..8] the spans mesh_splice_publish rewrites (the
 *        nodes array in place of timeout_ms);
 *     0  for anything else, and whenever it cannot vouch that the fields
 *        are exactly what relaynet.json.decode would give: text the decoder
 *        refuses, a key with an escape at the top level or in data, a
 *        routing field twice (the decoder keeps the last), an escape in a
 *        routing string or in the route, a ttl or timeout_ms not written as
 *        a plain integer of at most 18 digits, `from` of another type, a
 *        text that names `me` as "to":"ME" (most texts a target gets: they
 *        skip the scan), or a `me` that would need escaping.
 *   0 sends the text down the decoding road, which counts and answers
 *   everything as before: 0 changes nothing but the cost.
 *
 * core.mesh_splice_call(text, t, ttl, me, timeout_ms, timestamp) -> text
 *   The call scanned into t with its ttl and data.timeout_ms values
 *   replaced, `me` appended to its route and its timestamp value replaced
 *   (or "timestamp":N put first when it had none); every other byte as it
 *   came. Raises when t's spans do not fit the text (a bug, not input).
 *
 * core.mesh_splice_publish(text, t, ttl, me, nodes, timestamp) -> text
 *   The publish scanned into t (result 3) with data.nodes replaced by the
 *   list `nodes` (strings that need no escape; raises otherwise), its ttl
 *   replaced, `me` appended to its route and its timestamp replaced or put
 *   first; every other byte, the message's included, as it came.
 *
 * Neither allocates outside Lua values (except strtod's copy of a number
 * of 64 bytes or more), so a memory error unwinds cleanly.
 */
#include "rn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct rn_jscan {
  const char *s, *p, *e;
  int max_depth;
} rn_jscan;

static void rn__jsws(rn_jscan *d) {
  d->p = rn__json_ws(d->p, d->e);
}

/* After a member or element: skips white space, then a ',' (1: another
 * follows) or `close` (0: the container ended; d->p is past it), else -1. */
static int rn__jsafter(rn_jscan *d, char close) {
  rn__jsws(d);
  if (d->p < d->e && *d->p == ',') {
    d->p++;
    return 1;
  }
  if (d->p < d->e && *d->p == close) {
    d->p++;
    return 0;
  }
  return -1;
}

/* Bytes that end the plain run of a string: the quote, the backslash and
 * the control characters (which the decoder refuses). */
static const unsigned char rn__jsstop[256] = {
  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
  0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
};

/* Checks the string at d->p (on its opening quote) as the decoder would and
 * moves past it. *start and *len give its raw bytes (between the quotes);
 * *escaped tells whether it holds an escape (the raw bytes are then not its
 * value). Returns 0, or -1 for text the decoder refuses. */
static int rn__jsstring(rn_jscan *d, const char **start, size_t *len, int *escaped) {
  const char *q = ++d->p;
  *start = q;
  *escaped = 0;
  while (q < d->e) {
    unsigned char c;
    while (q + 4 <= d->e && !rn__jsstop[(unsigned char)q[0]] && !rn__jsstop[(unsigned char)q[1]] &&
           !rn__jsstop[(unsigned char)q[2]] && !rn__jsstop[(unsigned char)q[3]])
      q += 4;
    while (q < d->e && !rn__jsstop[(unsigned char)*q])
      q++;
    if (q >= d->e)
      break;
    c = (unsigned char)*q;
    if (c == '"') {
      *len = (size_t)(q - *start);
      d->p = q + 1;
      return 0;
    }
    if (c < 0x20)
      return -1;
    *escaped = 1; /* c is the backslash */
    if (q + 1 >= d->e)
      return -1;
    switch (q[1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
      q += 2;
      break;
    case 'u': {
      unsigned cp, lo;
      if (rn__json_hex4(q + 2, d->e, &cp) < 0)
        return -1;
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (d->e - (q + 6) < 6 || q[6] != '\\' || q[7] != 'u' || rn__json_hex4(q + 8, d->e, &lo) < 0 ||
            lo < 0xDC00 || lo > 0xDFFF)
          return -1;
        q += 6;
      } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        return -1;
      }
      q += 6;
      break;
    }
    default:
      return -1;
    }
  }
  return -1;
}

/* Checks a number as the decoder would. *plain is set when it is an integer
 * literal of at most 18 digits (so it fits in a lua_Integer as written), and
 * then *val holds it. Returns 0, or -1 for a number the decoder refuses
 * (bad grammar, or beyond the double range). */
static int rn__jsnumber(rn_jscan *d, int *plain, long long *val) {
  const char *p = d->p, *start = d->p;
  int is_int = 1;
  *plain = 0;
  if (p < d->e && *p == '-')
    p++;
  if (p >= d->e || *p < '0' || *p > '9')
    return -1;
  if (*p == '0')
    p++;
  else
    while (p < d->e && *p >= '0' && *p <= '9')
      p++;
  if (p < d->e && *p == '.') {
    is_int = 0;
    p++;
    if (p >= d->e || *p < '0' || *p > '9')
      return -1;
    while (p < d->e && *p >= '0' && *p <= '9')
      p++;
  }
  if (p < d->e && (*p == 'e' || *p == 'E')) {
    is_int = 0;
    p++;
    if (p < d->e && (*p == '+' || *p == '-'))
      p++;
    if (p >= d->e || *p < '0' || *p > '9')
      return -1;
    while (p < d->e && *p >= '0' && *p <= '9')
      p++;
  }
  d->p = p;
  if (is_int && p - start - (*start == '-') <= 18) {
    /* At most 18 digits: cannot overflow a 64-bit integer. */
    const char *q = start;
    int neg = *q == '-';
    long long v = 0;
    if (neg)
      q++;
    for (; q < p; q++)
      v = v * 10 + (*q - '0');
    *plain = 1;
    *val = neg ? -v : v;
    return 0;
  }
  if (is_int && p - start - (*start == '-') == 19)
    return 0; /* 19 digits: an integer or a float, never out of range */
  {
    /* The decoder refuses what strtod makes infinite. */
    size_t n = (size_t)(p - start);
    char tmp[64];
    double f;
    if (n < sizeof tmp) {
      memcpy(tmp, start, n);
      tmp[n] = 0;
      f = strtod(tmp, NULL);
    } else {
      char *big = (char *)malloc(n + 1);
      if (!big)
        return -1;
      memcpy(big, start, n);
      big[n] = 0;
      f = strtod(big, NULL);
      free(big);
    }
    if (f == (double)HUGE_VAL || f == -(double)HUGE_VAL)
      return -1;
  }
  return 0;
}

static int rn__jsvalue(rn_jscan *d, int depth);

/* Skips an array or object (d->p on its bracket) at nesting `depth`. */
static int rn__jscontainer(rn_jscan *d, int depth) {
  int is_obj = *d->p == '{';
  const char *ks;
  size_t kl;
  int esc;
  if (depth >= d->max_depth)
    return -1;
  d->p++;
  rn__jsws(d);
  if (d->p < d->e && *d->p == (is_obj ? '}' : ']')) {
    d->p++;
    return 0;
  }
  for (;;) {
    rn__jsws(d);
    if (is_obj) {
      if (d->p >= d->e || *d->p != '"')
        return -1;
      if (rn__jsstring(d, &ks, &kl, &esc) < 0)
        return -1;
      rn__jsws(d);
      if (d->p >= d->e || *d->p != ':')
        return -1;
      d->p++;
    }
    if (rn__jsvalue(d, depth + 1) < 0)
      return -1;
    switch (rn__jsafter(d, is_obj ? '}' : ']')) {
    case 1:
      continue;
    case 0:
      return 0;
    default:
      return -1;
    }
  }
}

/* Skips any value at nesting `depth` (leading whitespace included). */
static int rn__jsvalue(rn_jscan *d, int depth) {
  rn__jsws(d);
  if (d->p >= d->e)
    return -1;
  switch (*d->p) {
  case '{':
  case '[':
    return rn__jscontainer(d, depth);
  case '"': {
    const char *s;
    size_t l;
    int esc;
    return rn__jsstring(d, &s, &l, &esc);
  }
  case 't':
    if (d->e - d->p >= 4 && memcmp(d->p, "true", 4) == 0) {
      d->p += 4;
      return 0;
    }
    return -1;
  case 'f':
    if (d->e - d->p >= 5 && memcmp(d->p, "false", 5) == 0) {
      d->p += 5;
      return 0;
    }
    return -1;
  case 'n':
    if (d->e - d->p >= 4 && memcmp(d->p, "null", 4) == 0) {
      d->p += 4;
      return 0;
    }
    return -1;
  default:
    if (*d->p == '-' || (*d->p >= '0' && *d->p <= '9')) {
      int plain;
      long long v;
      return rn__jsnumber(d, &plain, &v);
    }
    return -1;
  }
}

/* The fields the scanner reports. Each has a bit in `seen` (a second
 * occurrence makes the scan give up: the decoder would keep the last one). */
enum {
  F_TYPE, F_ID, F_FROM, F_TO, F_REPLY_TO, F_TTL, F_ROUTE, F_TS, F_DATA,
  F_SERVER, F_METHOD, F_ARGS, F_TMO,
  F_TOPIC, F_RUN, F_SEQ, F_NODES, F_TEXT, F_JSON, F_EPOCH, F_OFFSET, F_COUNT
};
static const char *const rn__jsfield_names[] = {
  "type", "id", "from", "to", "reply_to", "ttl", "route", "timestamp", "data",
  "server", "method", "args", "timeout_ms",
  "topic", "run", "seq", "nodes", "text", "json", "epoch", "offset",
};

/* The fields whose value must be a plain string or a plain integer when a
 * call or response (CALL) or a publish (PUB) is vouched for; text and json
 * (the message itself) may hold escapes. */
#define RN_FBIT(x) (1u << (x))
#define RN_CALL_STRICT (RN_FBIT(F_TMO + 1) - 1u)
#define RN_PUB_STRICT                                                                                       \
  (RN_FBIT(F_TYPE) | RN_FBIT(F_ID) | RN_FBIT(F_FROM) | RN_FBIT(F_TTL) | RN_FBIT(F_TS) | RN_FBIT(F_TOPIC) |     \
   RN_FBIT(F_RUN) | RN_FBIT(F_SEQ) | RN_FBIT(F_EPOCH) | RN_FBIT(F_OFFSET))

/* The most data.nodes entries a publish the scan vouches for may list (the
 * default mesh_config.max_destinations); a longer list takes the decoding
 * road. */
#define RN_PUB_NODES_MAX 8192

typedef struct rn_jsfield {
  const char *s; /* raw string bytes, or the value's first byte */
  size_t len;
  long long ival;
  int kind;      /* 0 absent, 1 plain string, 2 plain integer, 3 present otherwise */
  const char *vs, *ve; /* the value's bytes [vs, ve) */
} rn_jsfield;

static const unsigned char rn__jsfield_len[] = {4, 2, 4, 2, 8, 3, 5, 9, 4, 6, 6, 4, 10, 5, 3, 3, 5, 4, 4, 5, 6};

static int rn__jsfield_of(const char *k, size_t kl, int data) {
  int i, lo = data ? F_SERVER : F_TYPE, hi = data ? F_COUNT : F_SERVER;
  for (i = lo; i < hi; i++)
    if (rn__jsfield_len[i] == kl && k[0] == rn__jsfield_names[i][0] && memcmp(rn__jsfield_names[i], k, kl) == 0)
      return i;
  return -1;
}

/* Reads one field value into f (kind as above). */
static int rn__jsread(rn_jscan *d, rn_jsfield *f, int depth) {
  rn__jsws(d);
  f->vs = d->p;
  if (d->p < d->e && *d->p == '"') {
    int esc;
    if (rn__jsstring(d, &f->s, &f->len, &esc) < 0)
      return -1;
    f->kind = esc ? 3 : 1;
  } else if (d->p < d->e && (*d->p == '-' || (*d->p >= '0' && *d->p <= '9'))) {
    int plain;
    if (rn__jsnumber(d, &plain, &f->ival) < 0)
      return -1;
    f->kind = plain ? 2 : 3;
  } else {
    if (rn__jsvalue(d, depth) < 0)
      return -1;
    f->kind = 3;
  }
  f->ve = d->p;
  return 0;
}

/* The route array (d->p on `[`): every element a string without escapes.
 * Returns 1 when it is such an array, 0 when it is valid JSON of another
 * shape (the scan gives up), -1 for invalid text. */
static int rn__jsroute(rn_jscan *d, int depth, const char *me, size_t melen, lua_Integer *n,
                       const char **first, size_t *flen, const char **last, size_t *llen, int *has_me,
                       const char **close) {
  const char *s;
  size_t l;
  int esc;
  *n = 0;
  *has_me = 0;
  if (depth >= d->max_depth)
    return -1;
  d->p++;
  rn__jsws(d);
  if (d->p < d->e && *d->p == ']') {
    *close = d->p;
    d->p++;
    return 1;
  }
  for (;;) {
    rn__jsws(d);
    if (d->p >= d->e)
      return -1;
    if (*d->p != '"') {
      /* valid or not, not a route this scanner vouches for */
      return rn__jsvalue(d, depth + 1) < 0 ? -1 : 0;
    }
    if (rn__jsstring(d, &s, &l, &esc) < 0)
      return -1;
    if (esc)
      return 0;
    if (++*n == 1) {
      *first = s;
      *flen = l;
    }
    *last = s;
    *llen = l;
    if (l == melen && memcmp(s, me, l) == 0)
      *has_me = 1;
    switch (rn__jsafter(d, ']')) {
    case 1:
      continue;
    case 0:
      *close = d->p - 1;
      return 1;
    default:
      return -1;
    }
  }
}

/* The keys of the scan table, interned once: upvalues of core.mesh_scan in
 * this order (a key pushed from an upvalue costs no hashing per message).
 * The spans go to the table's array part, t[1] .. t[RN_SPAN_N]. */
enum {
  K_ID = 1, K_FROM, K_TO, K_REPLY_TO, K_TTL, K_TMO, K_NROUTE, K_HAS_ME, K_ROUTE_ENDS, K_TOPIC_LEN, K_NODES,
  K_ROUTE, K_N = K_ROUTE
};
static const char *const rn__jskeys[K_N] = {
  "id", "from", "to", "reply_to", "ttl", "timeout_ms", "nroute", "has_me", "route_ends", "topic_len", "nodes",
  "route",
};
enum { S_OBJ_OPEN = 1, S_ROUTE_CLOSE, S_TTL_S, S_TTL_E, S_TMO_S, S_TMO_E, S_TS_S, S_TS_E, RN_SPAN_N = S_TS_E };
/* A publish's data.nodes array, from its `[` to its `]`, takes the place of
 * timeout_ms in the spans. */
#define S_NODES_S S_TMO_S
#define S_NODES_E S_TMO_E

/* t[key] = a string, an integer or a boolean (t is at index 2). */
static void rn__jsput_str(lua_State *L, int key, const char *s, size_t len) {
  lua_pushvalue(L, lua_upvalueindex(key));
  lua_pushlstring(L, s, len);
  lua_rawset(L, 2);
}

static void rn__jsput_int(lua_State *L, int key, lua_Integer v) {
  lua_pushvalue(L, lua_upvalueindex(key));
  lua_pushinteger(L, v);
  lua_rawset(L, 2);
}

static void rn__jsput_bool(lua_State *L, int key, int v) {
  lua_pushvalue(L, lua_upvalueindex(key));
  lua_pushboolean(L, v);
  lua_rawset(L, 2);
}

/* t[i] = the 1-based position of `at` in the text (0: none). */
static void rn__jsput_pos(lua_State *L, int i, const rn_jscan *d, const char *at) {
  lua_pushinteger(L, at ? (lua_Integer)(at - d->s) + 1 : 0);
  lua_rawseti(L, 2, i);
}

/* t[key] = the list of the n plain strings of the array [open, close] (a
 * route or a data.nodes the scan read with rn__jsroute). */
static void rn__jsput_list(lua_State *L, int key, const char *open, const char *close, lua_Integer n) {
  rn_jscan d;
  lua_Integer i;
  d.s = open;
  d.p = open + 1;
  d.e = close + 1;
  d.max_depth = 0;
  lua_pushvalue(L, lua_upvalueindex(key));
  lua_createtable(L, n > 64 ? 64 : (int)n, 0);
  for (i = 1; i <= n; i++) {
    const char *s;
    size_t l;
    int esc;
    rn__jsws(&d);
    if (rn__jsstring(&d, &s, &l, &esc) < 0)
      break; /* not reached: the scan checked the array */
    lua_pushlstring(L, s, l);
    lua_rawseti(L, -2, i);
    rn__jsws(&d);
    if (d.p < d.e && *d.p == ',')
      d.p++;
  }
  lua_rawset(L, 2);
}

/* The checks `relaynet.mesh.wire.is_name(s, max)` makes: a plain string of
 * 1..max bytes. */
static int rn__jsname(const rn_jsfield *f, size_t max) {
  return f->kind == 1 && f->len > 0 && f->len <= max;
}

/* core.mesh_scan(text, t, me, peer, max_depth) -> 0 | 1 | 2 (see the top). */
static int rn_mesh_scan(lua_State *L) {
  rn_jscan d;
  size_t len, melen, peerlen, i;
  rn_jsfield f[F_COUNT];
  unsigned seen = 0;
  const char *me, *peer, *obj_open, *route_open = NULL, *route_close = NULL;
  const char *r1 = NULL, *rn = NULL, *nodes_open = NULL, *nodes_close = NULL;
  size_t r1l = 0, rnl = 0;
  lua_Integer nroute = 0, nnodes = 0;
  int has_me = 0, route_ok = 0, data_obj = 0, nodes_ok = 0, nodes_me = 0, k;
  d.s = luaL_checklstring(L, 1, &len);
  luaL_checktype(L, 2, LUA_TTABLE);
  me = luaL_checklstring(L, 3, &melen);
  peer = luaL_checklstring(L, 4, &peerlen);
  d.max_depth = (int)luaL_checkinteger(L, 5);
  if (d.max_depth > RN_JSON_DEPTH_CAP)
    d.max_depth = RN_JSON_DEPTH_CAP;
  d.p = d.s;
  d.e = d.s + len;
  memset(f, 0, sizeof f);
  lua_settop(L, 5);
  /* this node's id goes into the text as it is: it must need no escape */
  for (i = 0; i < melen; i++)
    if (rn__jsstop[(unsigned char)me[i]])
      goto no;
  /* Most texts a target gets are for it: one that says so as the encoder
   * writes it ("to":"ME") takes the decoding road without a scan. Only the
   * cost depends on this test (a text the scan would have vouched for is
   * handled on that road all the same). */
  if (melen <= 64) {
    char needle[72];
    memcpy(needle, "\"to\":\"", 6);
    memcpy(needle + 6, me, melen);
    needle[6 + melen] = '"';
    if (memmem(d.s, len, needle, melen + 7))
      goto no;
  }
  if (rn__utf8_check((const unsigned char *)d.s, len) != 0)
    goto no;
  rn__jsws(&d);
  if (d.p >= d.e || *d.p != '{' || d.max_depth < 1)
    goto no;
  obj_open = d.p++;
  rn__jsws(&d);
  if (d.p < d.e && *d.p == '}') {
    d.p++;
    goto done;
  }
  for (;;) {
    const char *ks;
    size_t kl;
    int esc, fi;
    rn__jsws(&d);
    if (d.p >= d.e || *d.p != '"' || rn__jsstring(&d, &ks, &kl, &esc) < 0 || esc)
      goto no;
    rn__jsws(&d);
    if (d.p >= d.e || *d.p != ':')
      goto no;
    d.p++;
    fi = rn__jsfield_of(ks, kl, 0);
    if (fi >= 0) {
      if (seen & (1u << fi))
        goto no;
      seen |= 1u << fi;
    }
    if (fi == F_ROUTE) {
      int r;
      rn__jsws(&d);
      if (d.p >= d.e || *d.p != '[')
        goto no;
      route_open = d.p;
      r = rn__jsroute(&d, 1, me, melen, &nroute, &r1, &r1l, &rn, &rnl, &has_me, &route_close);
      if (r <= 0)
        goto no;
      route_ok = 1;
    } else if (fi == F_DATA) {
      rn__jsws(&d);
      if (d.p < d.e && *d.p == '{') {
        /* data: an object whose few routing fields are read too */
        if (d.max_depth < 2)
          goto no;
        data_obj = 1;
        d.p++;
        rn__jsws(&d);
        if (d.p < d.e && *d.p == '}') {
          d.p++;
        } else {
          for (;;) {
            int j;
            rn__jsws(&d);
            if (d.p >= d.e || *d.p != '"' || rn__jsstring(&d, &ks, &kl, &esc) < 0 || esc)
              goto no;
            rn__jsws(&d);
            if (d.p >= d.e || *d.p != ':')
              goto no;
            d.p++;
            j = rn__jsfield_of(ks, kl, 1);
            if (j >= 0) {
              if (seen & (1u << j))
                goto no;
              seen |= 1u << j;
              rn__jsws(&d);
              if (j == F_NODES && d.p < d.e && *d.p == '[') {
                /* a publish's destinations: plain strings, or no scan */
                const char *a, *b;
                size_t al, bl;
                nodes_open = d.p;
                if (rn__jsroute(&d, 2, me, melen, &nnodes, &a, &al, &b, &bl, &nodes_me, &nodes_close) <= 0)
                  goto no;
                nodes_ok = 1;
              } else if (rn__jsread(&d, &f[j], 2) < 0) {
                goto no;
              }
            } else if (rn__jsvalue(&d, 2) < 0) {
              goto no;
            }
            k = rn__jsafter(&d, '}');
            if (k < 0)
              goto no;
            if (k == 0)
              break;
          }
        }
      } else if (rn__jsvalue(&d, 1) < 0) {
        goto no;
      }
    } else if (fi >= 0) {
      if (rn__jsread(&d, &f[fi], 1) < 0)
        goto no;
    } else if (rn__jsvalue(&d, 1) < 0) {
      goto no;
    }
    k = rn__jsafter(&d, '}');
    if (k < 0)
      goto no;
    if (k == 0)
      break;
  }
done:
  rn__jsws(&d);
  if (d.p != d.e)
    goto no;
  if ((seen & (1u << F_ROUTE)) && !route_ok)
    goto no;
  if (f[F_TYPE].kind != 1)
    goto no;
  /* A string field that holds an escape, or a number that is not a plain
   * integer, is not something this scan vouches for: give up. A field of
   * another JSON type is reported as nil (its checks fail as they would on
   * the decoded value). Which fields count depends on the type. */
  {
    unsigned strict = f[F_TYPE].len == 7 && memcmp(f[F_TYPE].s, "publish", 7) == 0 ? RN_PUB_STRICT : RN_CALL_STRICT;
    for (i = 0; i < F_COUNT; i++) {
      if (f[i].kind != 3 || !(strict & (1u << i)))
        continue;
      if (*f[i].vs == '"' || *f[i].vs == '-' || (*f[i].vs >= '0' && *f[i].vs <= '9'))
        goto no;
    }
  }
  /* from, when present, must be a string: the link refuses anything else
   * before any handler runs (its own counter), on the decoding road. */
  if (f[F_FROM].kind != 0 && f[F_FROM].kind != 1)
    goto no;
  /* Only a call or a response that is not for this node and passes the
   * shape checks of mesh/calls.lua (valid_call; on_response) goes on from
   * its text: anything else takes the decoding road, and nothing is set. */
  {
    const rn_jsfield *ty = &f[F_TYPE], *to = &f[F_TO];
    int call;
    if (ty->len == 7 && memcmp(ty->s, "publish", 7) == 0) {
      /* A publish this node only relays (it is not in data.nodes) with the
       * shape mesh/pubsub.lua's valid() checks, the bounds of mesh_config
       * aside (topic_len and #nodes are reported for those). */
      const rn_jsfield *tx = &f[F_TEXT], *js = &f[F_JSON];
      int has_text = tx->kind != 0 && *tx->vs == '"', has_json = js->kind != 0 && *js->vs == '"';
      if (!data_obj || !rn__jsname(&f[F_ID], 128) || !rn__jsname(&f[F_FROM], 64) || f[F_TTL].kind != 2 ||
          !route_ok || f[F_TOPIC].kind != 1 || !rn__jsname(&f[F_RUN], 128) || f[F_SEQ].kind != 2 || !nodes_ok ||
          nnodes < 1 || nnodes > RN_PUB_NODES_MAX || nodes_me)
        goto no;
      /* exactly one of text and json, a string */
      if (has_text == has_json || (tx->kind != 0 && !has_text) || (js->kind != 0 && !has_json))
        goto no;
      if ((f[F_EPOCH].kind != 0 || f[F_OFFSET].kind != 0) && !(rn__jsname(&f[F_EPOCH], 64) && f[F_OFFSET].kind == 2))
        goto no;
      rn__jsput_str(L, K_FROM, f[F_FROM].s, f[F_FROM].len);
      rn__jsput_int(L, K_TTL, (lua_Integer)f[F_TTL].ival);
      rn__jsput_int(L, K_NROUTE, nroute);
      rn__jsput_bool(L, K_HAS_ME, has_me);
      rn__jsput_bool(L, K_ROUTE_ENDS, nroute > 0 && r1l == f[F_FROM].len && memcmp(r1, f[F_FROM].s, r1l) == 0 &&
                     rnl == peerlen && memcmp(rn, peer, rnl) == 0);
      rn__jsput_int(L, K_TOPIC_LEN, (lua_Integer)f[F_TOPIC].len);
      rn__jsput_list(L, K_NODES, nodes_open, nodes_close, nnodes);
      rn__jsput_list(L, K_ROUTE, route_open, route_close, nroute);
      rn__jsput_pos(L, S_OBJ_OPEN, &d, obj_open);
      rn__jsput_pos(L, S_ROUTE_CLOSE, &d, route_close);
      rn__jsput_pos(L, S_TTL_S, &d, f[F_TTL].vs);
      rn__jsput_pos(L, S_TTL_E, &d, f[F_TTL].ve - 1);
      rn__jsput_pos(L, S_NODES_S, &d, nodes_open);
      rn__jsput_pos(L, S_NODES_E, &d, nodes_close);
      rn__jsput_pos(L, S_TS_S, &d, f[F_TS].kind ? f[F_TS].vs : NULL);
      rn__jsput_pos(L, S_TS_E, &d, f[F_TS].kind ? f[F_TS].ve - 1 : NULL);
      lua_pushinteger(L, 3);
      return 1;
    }
    if (ty->len == 11 && memcmp(ty->s, "server_call", 11) == 0)
      call = 1;
    else if (ty->len == 15 && memcmp(ty->s, "server_response", 15) == 0)
      call = 0;
    else
      goto no;
    if (!rn__jsname(to, 64) || (to->len == melen && memcmp(to->s, me, melen) == 0) || !data_obj)
      goto no;
    if (!call) {
      if (!rn__jsname(&f[F_REPLY_TO], 128))
        goto no;
      rn__jsput_str(L, K_TO, to->s, to->len);
      rn__jsput_str(L, K_REPLY_TO, f[F_REPLY_TO].s, f[F_REPLY_TO].len);
      lua_pushinteger(L, 2);
      return 1;
    }
    if (!rn__jsname(&f[F_ID], 128) || !rn__jsname(&f[F_FROM], 64) || f[F_TTL].kind != 2 || !route_ok ||
        !rn__jsname(&f[F_SERVER], 128) || !rn__jsname(&f[F_METHOD], 128) || f[F_TMO].kind != 2 ||
        !(f[F_ARGS].kind == 3 && (*f[F_ARGS].vs == '[' || *f[F_ARGS].vs == '{')))
      goto no;
    rn__jsput_str(L, K_ID, f[F_ID].s, f[F_ID].len);
    rn__jsput_str(L, K_FROM, f[F_FROM].s, f[F_FROM].len);
    rn__jsput_str(L, K_TO, to->s, to->len);
    rn__jsput_int(L, K_TTL, (lua_Integer)f[F_TTL].ival);
    rn__jsput_int(L, K_TMO, (lua_Integer)f[F_TMO].ival);
    rn__jsput_int(L, K_NROUTE, nroute);
    rn__jsput_bool(L, K_HAS_ME, has_me);
    /* relay()'s spoofing check: the route starts at the sender and ends at
     * the neighbour it came from */
    rn__jsput_bool(L, K_ROUTE_ENDS, nroute > 0 && r1l == f[F_FROM].len && memcmp(r1, f[F_FROM].s, r1l) == 0 &&
                   rnl == peerlen && memcmp(rn, peer, rnl) == 0);
    rn__jsput_pos(L, S_OBJ_OPEN, &d, obj_open);
    rn__jsput_pos(L, S_ROUTE_CLOSE, &d, route_close);
    rn__jsput_pos(L, S_TTL_S, &d, f[F_TTL].vs);
    rn__jsput_pos(L, S_TTL_E, &d, f[F_TTL].ve - 1);
    rn__jsput_pos(L, S_TMO_S, &d, f[F_TMO].vs);
    rn__jsput_pos(L, S_TMO_E, &d, f[F_TMO].ve - 1);
    rn__jsput_pos(L, S_TS_S, &d, f[F_TS].kind ? f[F_TS].vs : NULL);
    rn__jsput_pos(L, S_TS_E, &d, f[F_TS].kind ? f[F_TS].ve - 1 : NULL);
    lua_pushinteger(L, 1);
    return 1;
  }
no:
  lua_pushinteger(L, 0);
  return 1;
}

/* Appends the decimal digits of v. */
static void rn__jsadd_int(luaL_Buffer *b, lua_Integer v) {
  char num[24], *q = num + sizeof num;
  unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
  do {
    *--q = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0)
    *--q = '-';
  luaL_addlstring(b, q, (size_t)(num + sizeof num - q));
}

/* Appends the nodes list at index 5 as a JSON array of strings. Raises on
 * a string that would need an escape (the scan vouched for none). */
static void rn__jsadd_nodes(lua_State *L, luaL_Buffer *b) {
  lua_Integer i, n = (lua_Integer)lua_rawlen(L, 5);
  luaL_addchar(b, '[');
  for (i = 1; i <= n; i++) {
    size_t l, k;
    const char *v;
    if (i > 1)
      luaL_addchar(b, ',');
    luaL_addchar(b, '"');
    /* the buffer's stack discipline: the value is pushed right before
     * luaL_addvalue, which pops it */
    if (lua_rawgeti(L, 5, i) != LUA_TSTRING)
      luaL_error(L, "mesh_splice_publish: node %d is not a string", (int)i);
    v = lua_tolstring(L, -1, &l);
    for (k = 0; k < l; k++)
      if (rn__jsstop[(unsigned char)v[k]])
        luaL_error(L, "mesh_splice_publish: node %d would need an escape", (int)i);
    luaL_addvalue(b);
    luaL_addchar(b, '"');
  }
  luaL_addchar(b, ']');
}

/* core.mesh_splice_call(text, t, ttl, me, timeout_ms, timestamp) and
 * core.mesh_splice_publish(text, t, ttl, me, nodes, timestamp) -> text
 * (see the top). */
static int rn__jssplice(lua_State *L, int publish) {
  size_t len, melen, pos;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_Integer sp[RN_SPAN_N + 1], ttl, tmo = 0, ts;
  const char *me;
  luaL_Buffer b;
  int i, comma;
  luaL_checktype(L, 2, LUA_TTABLE);
  ttl = luaL_checkinteger(L, 3);
  me = luaL_checklstring(L, 4, &melen);
  if (publish)
    luaL_checktype(L, 5, LUA_TTABLE);
  else
    tmo = luaL_checkinteger(L, 5);
  ts = luaL_checkinteger(L, 6);
  lua_settop(L, 6);
  for (i = 1; i <= RN_SPAN_N; i++) {
    lua_rawgeti(L, 2, i);
    sp[i] = lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  /* The spans of mesh_scan, in the order the encoder writes the keys or
   * any other: only their own consistency is checked. */
  if (sp[S_OBJ_OPEN] < 1 || (size_t)sp[S_ROUTE_CLOSE] > len || (size_t)sp[S_TTL_E] > len ||
      (size_t)sp[S_TMO_E] > len || (size_t)sp[S_TS_E] > len || sp[S_TTL_S] < 1 || sp[S_TTL_E] < sp[S_TTL_S] ||
      sp[S_TMO_S] < 1 || sp[S_TMO_E] < sp[S_TMO_S] || sp[S_ROUTE_CLOSE] < 1 || s[sp[S_ROUTE_CLOSE] - 1] != ']' ||
      s[sp[S_OBJ_OPEN] - 1] != '{' || (sp[S_TS_S] && sp[S_TS_E] < sp[S_TS_S]))
    return luaL_error(L, "mesh_splice_call: the scan does not fit the text");
  {
    /* Edits sorted by position: the first byte replaced (or inserted before)
     * and the last byte replaced (first - 1 for an insertion). */
    struct { lua_Integer a, e; int what; } ed[4], tmp;
    int n = 0, j;
    ed[n].a = sp[S_TTL_S], ed[n].e = sp[S_TTL_E], ed[n++].what = 0;
    ed[n].a = sp[S_TMO_S], ed[n].e = sp[S_TMO_E], ed[n++].what = 1;
    ed[n].a = sp[S_ROUTE_CLOSE], ed[n].e = sp[S_ROUTE_CLOSE] - 1, ed[n++].what = 2;
    if (sp[S_TS_S])
      ed[n].a = sp[S_TS_S], ed[n].e = sp[S_TS_E], ed[n++].what = 3;
    else
      ed[n].a = sp[S_OBJ_OPEN] + 1, ed[n].e = sp[S_OBJ_OPEN], ed[n++].what = 4;
    for (i = 1; i < n; i++) {
      tmp = ed[i];
      for (j = i; j > 0 && ed[j - 1].a > tmp.a; j--)
        ed[j] = ed[j - 1];
      ed[j] = tmp;
    }
    for (i = 1; i < n; i++)
      if (ed[i].a <= ed[i - 1].e || ed[i].a == ed[i - 1].a)
        return luaL_error(L, "mesh_splice_call: overlapping spans");
    /* the route's last element is followed by a comma; an empty route
     * (never relayed) is not */
    {
      lua_Integer k = sp[S_ROUTE_CLOSE] - 2;
      while (k >= 0 && (s[k] == ' ' || s[k] == '\t' || s[k] == '\n' || s[k] == '\r'))
        k--;
      comma = k >= 0 && s[k] != '[';
    }
    if (publish && (s[sp[S_NODES_S] - 1] != '[' || s[sp[S_NODES_E] - 1] != ']'))
      return luaL_error(L, "mesh_splice_publish: the scan does not fit the text");
    luaL_buffinit(L, &b);
    pos = 0;
    for (i = 0; i < n; i++) {
      size_t a = (size_t)ed[i].a - 1;
      luaL_addlstring(&b, s + pos, a - pos);
      switch (ed[i].what) {
      case 0: rn__jsadd_int(&b, ttl); break;
      case 1:
        if (publish)
          rn__jsadd_nodes(L, &b);
        else
          rn__jsadd_int(&b, tmo);
        break;
      case 2:
        if (comma)
          luaL_addchar(&b, ',');
        luaL_addchar(&b, '"');
        luaL_addlstring(&b, me, melen);
        luaL_addchar(&b, '"');
        break;
      case 3: rn__jsadd_int(&b, ts); break;
      default:
        luaL_addstring(&b, "\"timestamp\":");
        rn__jsadd_int(&b, ts);
        luaL_addchar(&b, ',');
        break;
      }
      pos = (size_t)ed[i].e;
    }
    luaL_addlstring(&b, s + pos, len - pos);
    luaL_pushresult(&b);
  }
  return 1;
}

static int rn_mesh_splice_call(lua_State *L) {
  return rn__jssplice(L, 0);
}

static int rn_mesh_splice_publish(lua_State *L) {
  return rn__jssplice(L, 1);
}

void rn__jsonscan_open_lua(lua_State *L) {
  int i;
  for (i = 0; i < K_N; i++)
    lua_pushstring(L, rn__jskeys[i]);
  lua_pushcclosure(L, rn_mesh_scan, K_N);
  lua_setfield(L, -2, "mesh_scan");
  lua_pushcfunction(L, rn_mesh_splice_call);
  lua_setfield(L, -2, "mesh_splice_call");
  lua_pushcfunction(L, rn_mesh_splice_publish);
  lua_setfield(L, -2, "mesh_splice_publish");
}
