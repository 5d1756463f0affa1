/*
 * relaynet core: HTTP requests on a server's port.
 *
 * An rn_req is reference counted: the lws side holds one from the headers
 * until the response is written or the connection goes (rn__req_detach),
 * the Lua box holds one, and a queued RN_EV_HTTP holds one. The body is
 * collected up to max_body, against body_timeout and body_min_rate (the
 * loop's sweep answers a late one 408) and the server's max_buffered; the
 * request reaches Lua once it is whole. The response is written from the
 * HTTP WRITEABLE callback.
 */
#include "rn.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* The list of requests whose body is still arriving (rn__body_sweep). */
static void rn__body_track(rn_req *r) {
  rn_loop *l = r->L;
  if (r->in_body_list)
    return;
  r->bprev = NULL;
  r->bnext = l->body_reqs;
  if (l->body_reqs)
    l->body_reqs->bprev = r;
  l->body_reqs = r;
  r->in_body_list = 1;
}

static void rn__body_untrack(rn_req *r) {
  if (!r->in_body_list)
    return;
  if (r->bprev)
    r->bprev->bnext = r->bnext;
  else
    r->L->body_reqs = r->bnext;
  if (r->bnext)
    r->bnext->bprev = r->bprev;
  r->bnext = r->bprev = NULL;
  r->in_body_list = 0;
}

/* 1 when the body is past its deadline (body_timeout after the headers) or,
 * once RN_BODY_GRACE_MS have passed, arrives slower than body_min_rate on
 * average. */
static int rn__body_late(const rn_req *r, uint64_t now) {
  const rn_limits *lim = &r->srv->lim;
  double ms = now > r->body_start ? (double)(now - r->body_start) : 0;
  if (r->body_expect == 0) /* no body: its clock never started */
    return 0;
  if (lim->body_timeout > 0 && ms >= lim->body_timeout * 1000.0)
    return 1;
  if (lim->body_min_rate > 0 && ms >= RN_BODY_GRACE_MS &&
      (double)r->body_len < (double)lim->body_min_rate * ms / 1000.0)
    return 1;
  return 0;
}

static void rn__count_body_timeout(rn_req *r) {
  r->srv->counters.http_body_timeouts++;
  r->L->counters.http_body_timeouts++;
}

/* Runs from the loop's one-second sweep timer: a late body is answered with
 * 408 from the next HTTP_WRITEABLE callback (lws must write it). */
void rn__body_sweep(rn_loop *l) {
  rn_req *r = l->body_reqs, *next;
  uint64_t now = uv_now(&l->loop);
  for (; r; r = next) {
    next = r->bnext;
    if (!r->wsi || !r->srv) {
      rn__body_untrack(r);
      continue;
    }
    if (rn__body_late(r, now)) {
      rn__body_untrack(r);
      r->body_timed_out = 1;
      rn__count_body_timeout(r);
      lws_callback_on_writable(r->wsi);
    }
  }
}

void rn__req_unref(rn_req *r) {
  if (--r->refcnt > 0)
    return;
  rn__body_untrack(r);
  if (r->srv) {
    rn__buffered_sub(r->srv, r->body_cap);
    rn__server_unref(r->srv);
  }
  free(r->uri);
  free(r->query);
  free(r->headers);
  free(r->body);
  free(r->resp_headers);
  free(r->resp_body);
  free(r);
}

/* Detaches the request from its wsi (response done or connection gone). */
void rn__req_detach(rn_pss *pss) {
  rn_req *r = pss->req;
  if (!r)
    return;
  pss->req = NULL;
  r->wsi = NULL;
  r->done = 1;
  rn__body_untrack(r);
  rn__req_unref(r);
}

static int rn__is_uri_token(int t) {
  switch (t) {
  case WSI_TOKEN_GET_URI: case WSI_TOKEN_POST_URI: case WSI_TOKEN_OPTIONS_URI:
  case WSI_TOKEN_PATCH_URI: case WSI_TOKEN_PUT_URI: case WSI_TOKEN_DELETE_URI:
  case WSI_TOKEN_HTTP_URI_ARGS: case WSI_TOKEN_CONNECT: case WSI_TOKEN_HEAD_URI:
  case WSI_TOKEN_HTTP1_0: case WSI_TOKEN_HTTP: case WSI_TOKEN_HTTP_COLON_AUTHORITY:
  case WSI_TOKEN_HTTP_COLON_METHOD: case WSI_TOKEN_HTTP_COLON_PATH:
  case WSI_TOKEN_HTTP_COLON_SCHEME: case WSI_TOKEN_HTTP_COLON_STATUS:
    return 1;
  default:
    return 0;
  }
}

/* Collects the standard headers as "name\0value\0" pairs. */
static int rn__collect_headers(rn_req *r, struct lws *wsi) {
  size_t cap = 512, used = 0;
  char *buf = (char *)malloc(cap);
  int t;
  if (!buf)
    return -1;
  for (t = 0; t < WSI_TOKEN_COUNT; t++) {
    const char *name;
    size_t nlen;
    int vlen, k;
    if (rn__is_uri_token(t))
      continue;
    vlen = lws_hdr_total_length(wsi, (enum lws_token_indexes)t);
    if (vlen <= 0)
      continue;
    name = (const char *)lws_token_to_string((enum lws_token_indexes)t);
    if (!name)
      continue;
    nlen = strlen(name);
    if (nlen && name[nlen - 1] == ':')
      nlen--;
    while (used + nlen + (size_t)vlen + 3 > cap) {
      char *n;
      cap *= 2;
      n = (char *)realloc(buf, cap);
      if (!n) {
        free(buf);
        return -1;
      }
      buf = n;
    }
    for (k = 0; k < (int)nlen; k++)
      buf[used + (size_t)k] = (char)tolower((unsigned char)name[k]);
    used += nlen;
    buf[used++] = '\0';
    if (lws_hdr_copy(wsi, buf + used, vlen + 1, (enum lws_token_indexes)t) < 0)
      vlen = 0;
    used += (size_t)vlen;
    buf[used++] = '\0';
  }
  r->headers = buf;
  r->headers_len = used;
  return 0;
}

static const char *rn__method_names[] = {"GET", "POST", "OPTIONS", "PUT", "PATCH",
                                         "DELETE", "CONNECT", "HEAD"};

static void rn__req_ready(rn_req *r) {
  rn_event ev;
  /* lws also fires BODY_COMPLETION for a POST with Content-Length: 0,
   * which was already handed over when the headers arrived. */
  if (r->ready)
    return;
  r->ready = 1;
  rn__body_untrack(r);
  memset(&ev, 0, sizeof ev);
  ev.type = RN_EV_HTTP;
  ev.req = r;
  rn__event_push(r->L, &ev);
}

/* Answers with a status at once and tells lws to end the transaction. */
int rn__http_refuse(struct lws *wsi, rn_pss *pss, int status) {
  rn__req_detach(pss);
  if (lws_return_http_status(wsi, (unsigned)status, NULL))
    return -1;
  return lws_http_transaction_completed(wsi) ? -1 : 0;
}

int rn__http_begin(rn_server *s, struct lws *wsi, rn_pss *pss) {
  char *uri = NULL, buf[32];
  int ulen = 0, m, cl_len;
  rn_req *r;

  if (pss->req) /* a previous request on this connection was abandoned */
    rn__req_detach(pss);
  m = lws_http_get_uri_and_method(wsi, &uri, &ulen);
  if (m < 0 || m > LWSHUMETH_HEAD || !uri)
    return rn__http_refuse(wsi, pss, 400);
  {
    /* Protected mode (rn_protect.c): compare the path without its query. */
    char path[256];
    int pl = ulen < (int)sizeof path ? ulen : (int)sizeof path - 1, rc;
    memcpy(path, uri, (size_t)pl);
    path[pl] = '\0';
    rc = rn__protect_refuse(s, wsi, path);
    if (rc < 0)
      return -1;
    if (rc > 0) /* "connection: close" was sent: hang up */
      return -1;
  }
  if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0)
    return rn__http_refuse(wsi, pss, 411);
  r = (rn_req *)calloc(1, sizeof *r);
  if (!r)
    return -1;
  r->L = s->L;
  r->srv = s;
  s->refcnt++;
  r->wsi = wsi;
  r->refcnt = 1; /* the lws side (pss) */
  pss->req = r;
  strcpy(r->method, rn__method_names[m]);
  r->uri = (char *)malloc((size_t)ulen + 1);
  if (!r->uri)
    return -1;
  memcpy(r->uri, uri, (size_t)ulen);
  r->uri[ulen] = '\0';
  {
    /* lws has already percent-decoded each argument ("k=v", '+' as space);
     * keep them apart ('\0'-separated) so '&' or ',' inside values survive. */
    int qlen = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_URI_ARGS);
    if (qlen > 0) {
      size_t used = 0, cap = (size_t)qlen + 64;
      int i, n;
      r->query = (char *)malloc(cap);
      if (!r->query)
        return -1;
      for (i = 0; i < 256; i++) {
        n = lws_hdr_copy_fragment(wsi, r->query + used, (int)(cap - used), WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n < 0)
          break;
        used += (size_t)n + 1; /* keep the terminating NUL as separator */
        if (used >= cap)
          break;
      }
      r->query_len = used;
    }
  }
  if (rn__collect_headers(r, wsi) < 0)
    return -1;
  rn__peer_name(wsi, r->peer, sizeof r->peer);

  cl_len = lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_CONTENT_LENGTH);
  if (cl_len > 0) {
    char *end;
    unsigned long long v;
    int k;
    for (k = 0; k < cl_len; k++) /* digits only: strtoull accepts signs */
      if (buf[k] < '0' || buf[k] > '9')
        return rn__http_refuse(wsi, pss, 400);
    errno = 0;
    v = strtoull(buf, &end, 10);
    if (errno || *end || end == buf)
      return rn__http_refuse(wsi, pss, 400);
    if (v > s->lim.max_body) {
      s->counters.http_body_too_large++;
      s->L->counters.http_body_too_large++;
      return rn__http_refuse(wsi, pss, 413);
    }
    r->body_expect = (size_t)v;
  }
  if (r->body_expect == 0) {
    rn__req_ready(r);
    return 0;
  }
  /* The body buffer grows as bytes arrive: a declared length alone costs
   * nothing. The clock for body_timeout starts now. */
  r->body_start = uv_now(&s->L->loop);
  rn__body_track(r);
  return 0;
}

/* Answers 408 and drops the connection: the rest of the body is unread, so
 * the connection cannot carry another request. */
static int rn__http_timeout(struct lws *wsi, rn_pss *pss) {
  rn__req_detach(pss);
  lws_return_http_status(wsi, 408, NULL);
  return -1;
}

int rn__http_body(rn_pss *pss, struct lws *wsi, const void *in, size_t len) {
  rn_req *r = pss->req;
  if (!r)
    return 0;
  if (r->body_timed_out)
    return rn__http_timeout(wsi, pss);
  if (r->body_len + len > r->body_expect) {
    r->srv->counters.http_body_too_large++;
    r->L->counters.http_body_too_large++;
    return rn__http_refuse(wsi, pss, 413);
  }
  if (rn__body_late(r, uv_now(&r->L->loop))) {
    rn__count_body_timeout(r);
    return rn__http_timeout(wsi, pss);
  }
  /* Geometric growth from 16 KiB, capped at the declared length (itself at
   * most max_body): a Content-Length alone allocates nothing. Growth past
   * the server's max_buffered is answered 503 and the connection closes
   * (the rest of the body is unread). */
  {
    size_t oldcap = r->body_cap;
    size_t ncap = rn__grow_cap(oldcap, r->body_len + len, 16384, r->body_expect);
    if (ncap > oldcap && !rn__buffered_fits(r->srv, ncap - oldcap)) {
      r->srv->counters.buffer_body_refusals++;
      r->L->counters.buffer_body_refusals++;
      rn__req_detach(pss);
      lws_return_http_status(wsi, 503, NULL);
      return -1;
    }
    if (rn__grow(&r->body, &r->body_cap, r->body_len + len, 16384, r->body_expect) < 0)
      return -1;
    rn__buffered_add(r->srv, r->body_cap - oldcap);
  }
  if (len)
    memcpy(r->body + r->body_len, in, len);
  r->body_len += len;
  return 0;
}

int rn__http_writeable(rn_pss *pss, struct lws *wsi) {
  rn_req *r = pss->req;
  if (r && r->body_timed_out)
    return rn__http_timeout(wsi, pss);
  if (!r || !r->responded)
    return 0;
  if (!r->headers_sent) {
    unsigned char hbuf[LWS_PRE + 8192];
    unsigned char *start = hbuf + LWS_PRE, *p = start, *end = hbuf + sizeof hbuf - 1;
    const char *ctype = "text/plain; charset=utf-8";
    size_t off = 0;
    /* content-type goes through lws_add_http_common_headers */
    while (off < r->resp_headers_len) {
      const char *name = r->resp_headers + off;
      const char *val = name + strlen(name) + 1;
      off = (size_t)(val - r->resp_headers) + strlen(val) + 1;
      if (!strcmp(name, "content-type"))
        ctype = val;
    }
    if (lws_add_http_common_headers(wsi, (unsigned)r->status, ctype, r->resp_len, &p, end) ||
        rn__fix_status_line(start, &p, end, r->status) < 0)
      return -1;
    if (r->status == 204 || r->status == 304)
      rn__drop_content_length(start, &p);
    off = 0;
    while (off < r->resp_headers_len) {
      char hname[256];
      const char *name = r->resp_headers + off;
      const char *val = name + strlen(name) + 1;
      size_t nlen = strlen(name);
      off = (size_t)(val - r->resp_headers) + strlen(val) + 1;
      if (!strcmp(name, "content-type") || !strcmp(name, "content-length") || nlen + 2 > sizeof hname)
        continue;
      memcpy(hname, name, nlen);
      hname[nlen] = ':';
      hname[nlen + 1] = '\0';
      if (lws_add_http_header_by_name(wsi, (const unsigned char *)hname, (const unsigned char *)val,
                                      (int)strlen(val), &p, end))
        return -1;
    }
    if (lws_finalize_write_http_header(wsi, start, &p, end))
      return -1;
    r->headers_sent = 1;
    if (r->resp_len == 0 || !strcmp(r->method, "HEAD")) {
      rn__req_detach(pss);
      return lws_http_transaction_completed(wsi) ? -1 : 0;
    }
    lws_callback_on_writable(wsi);
    return 0;
  }
  {
    size_t chunk = r->resp_len - r->resp_off;
    int last;
    unsigned char *p;
    if (chunk > 16384)
      chunk = 16384;
    last = r->resp_off + chunk == r->resp_len;
    p = rn__scratch(r->L, chunk);
    if (!p)
      return -1;
    memcpy(p, r->resp_body + r->resp_off, chunk);
    if (lws_write(wsi, p, chunk, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) != (int)chunk)
      return -1;
    r->resp_off += chunk;
    if (!last) {
      lws_callback_on_writable(wsi);
      return 0;
    }
    rn__req_detach(pss);
    return lws_http_transaction_completed(wsi) ? -1 : 0;
  }
}

/* LWS_CALLBACK_HTTP_BODY_COMPLETION: a body that ended short of its
 * Content-Length is answered 400; a whole one hands the request to Lua. */
int rn__http_body_done(rn_pss *pss, struct lws *wsi) {
  if (pss && pss->req && !pss->req->body_refused) {
    if (pss->req->body_len != pss->req->body_expect)
      return rn__http_refuse(wsi, pss, 400);
    rn__req_ready(pss->req);
  }
  return 0;
}

/* ---- Lua: requests ------------------------------------------------------- */

static rn_req *rn__req_check(lua_State *L, int idx) {
  rn_req **b = (rn_req **)luaL_checkudata(L, idx, RN_REQ_MT);
  if (!*b)
    luaL_argerror(L, idx, "request object is released");
  return *b;
}

void rn__req_push(lua_State *L, rn_req *r) {
  rn_req **b = (rn_req **)lua_newuserdatauv(L, sizeof *b, 0);
  *b = r;
  r->refcnt++;
  luaL_setmetatable(L, RN_REQ_MT);
}

/* req:info() -> { method, path, query, headers = {}, body, peer, server }.
 * The body is handed over: the Lua string is its only copy from then on, so
 * the C buffer is freed (and leaves max_buffered) at once instead of when the
 * request object is collected; a later info() has an empty body. */
static int rn_req_info(lua_State *L) {
  rn_req *r = rn__req_check(L, 1);
  size_t off = 0;
  lua_createtable(L, 0, 7);
  lua_pushstring(L, r->method);
  lua_setfield(L, -2, "method");
  lua_pushstring(L, r->uri);
  lua_setfield(L, -2, "path");
  lua_pushlstring(L, r->query ? r->query : "", r->query_len);
  lua_setfield(L, -2, "query");
  lua_pushlstring(L, r->body ? (const char *)r->body : "", r->body_len);
  lua_setfield(L, -2, "body");
  if (r->ready && r->body) {
    if (r->srv)
      rn__buffered_sub(r->srv, r->body_cap);
    free(r->body);
    r->body = NULL;
    r->body_cap = r->body_len = 0;
  }
  lua_pushstring(L, r->peer);
  lua_setfield(L, -2, "peer");
  lua_pushinteger(L, r->srv ? r->srv->port : 0);
  lua_setfield(L, -2, "port");
  lua_newtable(L);
  while (off < r->headers_len) {
    const char *name = r->headers + off;
    const char *val = name + strlen(name) + 1;
    off = (size_t)(val - r->headers) + strlen(val) + 1;
    lua_pushstring(L, val);
    lua_setfield(L, -2, name);
  }
  lua_setfield(L, -2, "headers");
  return 1;
}

/* req:header(name): a header lws does not know by name (custom headers),
 * available while the request is in flight. */
static int rn_req_header(lua_State *L) {
  rn_req *r = rn__req_check(L, 1);
  size_t nlen;
  const char *name = luaL_checklstring(L, 2, &nlen);
  char hname[128], val[1024];
  int n;
  if (!r->wsi || r->responded || nlen + 2 > sizeof hname)
    return 0;
  memcpy(hname, name, nlen);
  hname[nlen] = ':';
  hname[nlen + 1] = '\0';
  n = lws_hdr_custom_copy(r->wsi, val, (int)sizeof val, hname, (int)nlen + 1);
  if (n < 0)
    return 0;
  lua_pushlstring(L, val, (size_t)n);
  return 1;
}

/* req:respond(status, headers, body) -> true | nil, msg, "ECLOSED" */
static int rn_req_respond(lua_State *L) {
  rn_req *r = rn__req_check(L, 1);
  lua_Integer status = luaL_checkinteger(L, 2);
  size_t blen = 0, cap = 256, used = 0;
  const char *body;
  char *hb;
  if (status < 100 || status > 599)
    return luaL_argerror(L, 2, "HTTP status must be 100..599");
  if (!lua_isnoneornil(L, 3))
    luaL_checktype(L, 3, LUA_TTABLE);
  body = luaL_optlstring(L, 4, "", &blen);
  if (r->responded)
    return luaL_error(L, "relaynet: this request was already answered");
  if (!r->wsi)
    return rn__fail(L, "ECLOSED", "the HTTP client went away before the response");
  hb = (char *)malloc(cap);
  if (!hb)
    return luaL_error(L, "out of memory");
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      size_t nl, vl, k;
      const char *n, *v;
      if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1)) {
        free(hb);
        return luaL_error(L, "relaynet: response headers must map strings to strings");
      }
      n = lua_tolstring(L, -2, &nl);
      v = lua_tolstring(L, -1, &vl);
      if (memchr(v, '\r', vl) || memchr(v, '\n', vl) || memchr(n, ':', nl) ||
          memchr(n, '\n', nl) || strlen(v) != vl || strlen(n) != nl) {
        free(hb);
        return luaL_error(L, "relaynet: invalid character in response header '%s'", n);
      }
      while (used + nl + vl + 2 > cap) {
        char *nb;
        cap *= 2;
        nb = (char *)realloc(hb, cap);
        if (!nb) {
          free(hb);
          return luaL_error(L, "out of memory");
        }
        hb = nb;
      }
      for (k = 0; k < nl; k++)
        hb[used + k] = (char)tolower((unsigned char)n[k]);
      used += nl;
      hb[used++] = '\0';
      memcpy(hb + used, v, vl);
      used += vl;
      hb[used++] = '\0';
      lua_pop(L, 1);
    }
  }
  r->resp_headers = hb;
  r->resp_headers_len = used;
  if (blen) {
    r->resp_body = (unsigned char *)malloc(blen);
    if (!r->resp_body)
      return luaL_error(L, "out of memory");
    memcpy(r->resp_body, body, blen);
  }
  r->resp_len = blen;
  r->status = (int)status;
  r->responded = 1;
  lws_callback_on_writable(r->wsi);
  lua_pushboolean(L, 1);
  return 1;
}

static int rn_req_gc(lua_State *L) {
  rn_req **b = (rn_req **)luaL_checkudata(L, 1, RN_REQ_MT);
  if (*b) {
    rn_req *r = *b;
    *b = NULL;
    rn__req_unref(r);
  }
  return 0;
}

static int rn_req_tostring(lua_State *L) {
  rn_req **b = (rn_req **)luaL_checkudata(L, 1, RN_REQ_MT);
  if (!*b)
    lua_pushliteral(L, "relaynet.request (released)");
  else
    lua_pushfstring(L, "relaynet.request %s %s%s", (*b)->method, (*b)->uri,
                    (*b)->done ? " (closed)" : "");
  return 1;
}

void rn__req_open_lua(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"info", rn_req_info},
    {"header", rn_req_header},
    {"respond", rn_req_respond},
    {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__gc", rn_req_gc},
    {"__tostring", rn_req_tostring},
    {NULL, NULL}};
  luaL_newmetatable(L, RN_REQ_MT);
  luaL_setfuncs(L, meta, 0);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
