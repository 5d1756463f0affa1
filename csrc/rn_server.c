/*
 * relaynet core: listening servers (one lws vhost each), the server protocol
 * callback for HTTP and WebSocket on one port, and HTTP request objects.
 *
 * An rn_server lives until the lws context is destroyed (lws keeps pointers
 * to its protocols array until then), so core.shutdown() releases the
 * loop's reference to every server; Lua boxes and live connections/requests
 * hold the others.
 */
#include "rn.h"

#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>


/* Per-session data for the server protocol: a wsi is either an HTTP
 * connection (req set while a request is in flight) or a WebSocket. */
typedef struct rn_pss {
  rn_req *req;
  rn_conn *conn;
} rn_pss;

/* ---- connections per source address ------------------------------------- */

/* The key of a peer address: IPv4 as an IPv4-mapped IPv6 address, IPv6 cut
 * to its /64 (one host usually owns a whole /64). Returns -1 for other
 * families (not counted). */
static int rn__ip_key(const struct sockaddr *sa, unsigned char key[16]) {
  memset(key, 0, 16);
  if (sa->sa_family == AF_INET) {
    key[10] = key[11] = 0xff;
    memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    return 0;
  }
  if (sa->sa_family == AF_INET6) {
    const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memcpy(key, a, !memcmp(a, mapped, 12) ? 16 : 8);
    return 0;
  }
  return -1;
}

static unsigned rn__ip_hash(const unsigned char key[16]) {
  uint32_t h = 2166136261u;
  int i;
  for (i = 0; i < 16; i++)
    h = (h ^ key[i]) * 16777619u;
  return h % RN_IP_BUCKETS;
}

static rn_ipent *rn__ip_find(rn_server *s, const unsigned char key[16]) {
  rn_ipent *e;
  if (!s->ips)
    return NULL;
  for (e = s->ips[rn__ip_hash(key)]; e; e = e->next)
    if (!memcmp(e->addr, key, 16))
      return e;
  return NULL;
}

static void rn__ips_free(rn_server *s) {
  int i;
  if (!s->ips)
    return;
  for (i = 0; i < RN_IP_BUCKETS; i++) {
    rn_ipent *e = s->ips[i], *next;
    for (; e; e = next) {
      next = e->next;
      free(e);
    }
  }
  free(s->ips);
  s->ips = NULL;
}

/* FILTER_NETWORK_CONNECTION: 1 refuses a new TCP connection whose address
 * already has max_connections_per_ip connections to this server (lws then
 * closes the socket before reading anything). */
static int rn__ip_filter(rn_server *s, const struct lws_filter_network_conn_args *a) {
  unsigned char key[16];
  rn_ipent *e;
  if (!a || s->lim.max_connections_per_ip <= 0)
    return 0;
  if (rn__ip_key((const struct sockaddr *)&a->cli_addr, key) < 0)
    return 0;
  e = rn__ip_find(s, key);
  if (e && e->count >= s->lim.max_connections_per_ip) {
    s->counters.conn_refused_per_ip++;
    s->L->counters.conn_refused_per_ip++;
    return 1;
  }
  return 0;
}

/* SERVER_NEW_CLIENT_INSTANTIATED: counts the connection under its address.
 * The entry rides on the wsi (opaque user data) until WSI_DESTROY, and the
 * count holds a server reference so the table outlives every counted wsi. */
static void rn__ip_count(rn_server *s, struct lws *wsi) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  unsigned char key[16];
  rn_ipent *e;
  int fd;
  if (s->lim.max_connections_per_ip <= 0)
    return;
  fd = (int)lws_get_socket_fd(wsi);
  if (fd < 0 || getpeername(fd, (struct sockaddr *)&ss, &sl) < 0 ||
      rn__ip_key((const struct sockaddr *)&ss, key) < 0)
    return;
  if (!s->ips && !(s->ips = (rn_ipent **)calloc(RN_IP_BUCKETS, sizeof *s->ips)))
    return;
  e = rn__ip_find(s, key);
  if (!e) {
    unsigned h = rn__ip_hash(key);
    if (!(e = (rn_ipent *)calloc(1, sizeof *e)))
      return;
    memcpy(e->addr, key, 16);
    e->next = s->ips[h];
    s->ips[h] = e;
  }
  e->count++;
  s->nips_conns++;
  s->refcnt++;
  lws_set_opaque_user_data(wsi, e);
}

/* WSI_DESTROY: the counted connection is gone. */
static void rn__ip_uncount(rn_server *s, struct lws *wsi) {
  rn_ipent *e = (rn_ipent *)lws_get_opaque_user_data(wsi);
  if (!e)
    return;
  lws_set_opaque_user_data(wsi, NULL);
  if (--e->count == 0 && s->ips) {
    rn_ipent **pp = &s->ips[rn__ip_hash(e->addr)];
    for (; *pp; pp = &(*pp)->next)
      if (*pp == e) {
        *pp = e->next;
        break;
      }
    free(e);
  }
  s->nips_conns--;
  rn__server_unref(s);
}

void rn__server_unref(rn_server *s) {
  rn_server **pp;
  int i;
  if (--s->refcnt > 0)
    return;
  for (pp = &s->L->servers; *pp; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      break;
    }
  for (i = 0; i < s->norigins; i++)
    free(s->origins[i]);
  free(s->origins);
  rn__protect_free(s);
  rn__ips_free(s);
  free(s->host);
  free(s);
}

/* ---- requests ------------------------------------------------------------ */

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
static void rn__req_detach(rn_pss *pss) {
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
static int rn__http_refuse(struct lws *wsi, rn_pss *pss, int status) {
  rn__req_detach(pss);
  if (lws_return_http_status(wsi, (unsigned)status, NULL))
    return -1;
  return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int rn__http_begin(rn_server *s, struct lws *wsi, rn_pss *pss) {
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
  lws_get_peer_simple(wsi, r->peer, sizeof r->peer);

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

static int rn__http_body(rn_pss *pss, struct lws *wsi, const void *in, size_t len) {
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

static int rn__http_writeable(rn_pss *pss, struct lws *wsi) {
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
    if (lws_add_http_common_headers(wsi, (unsigned)r->status, ctype, r->resp_len, &p, end))
      return -1;
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

/* 426 Upgrade Required with the version we speak (RFC 6455 4.2.2). */
static int rn__refuse_version(struct lws *wsi) {
  unsigned char buf[LWS_PRE + 512];
  unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + sizeof buf - 1;
  static const char body[] = "unsupported WebSocket version\n";
  if (lws_add_http_common_headers(wsi, 426, "text/plain", sizeof body - 1, &p, end) ||
      lws_add_http_header_by_name(wsi, (const unsigned char *)"sec-websocket-version:",
                                  (const unsigned char *)"13", 2, &p, end) ||
      lws_finalize_write_http_header(wsi, start, &p, end))
    return -1;
  memcpy(start, body, sizeof body - 1);
  if (lws_write(wsi, start, sizeof body - 1, LWS_WRITE_HTTP_FINAL) < 0)
    return -1;
  return 1;
}

static int rn__origin_allowed(rn_server *s, struct lws *wsi) {
  char origin[256];
  int i, n;
  if (!s->origins)
    return 1;
  n = lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN);
  if (n <= 0)
    return 0;
  for (i = 0; i < s->norigins; i++)
    if (!strcmp(s->origins[i], origin))
      return 1;
  return 0;
}

/* The server owning the vhost a wsi belongs to (for wsis no protocol is
 * bound to yet). */
static rn_server *rn__vhost_server(struct lws *wsi) {
  struct lws_vhost *vh = lws_get_vhost(wsi);
  const struct lws_protocols *p = vh ? lws_vhost_name_to_protocol(vh, "rn-server") : NULL;
  return p ? (rn_server *)p->user : NULL;
}

int rn__server_callback(struct lws *wsi, enum lws_callback_reasons reason,
                        void *user, void *in, size_t len) {
  const struct lws_protocols *prot = lws_get_protocol(wsi);
  rn_server *s = prot ? (rn_server *)prot->user : NULL;
  rn_pss *pss = (rn_pss *)user;

  switch (reason) {
  case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
    /* lws 4.1.6 calls protocols[0] of the listening vhost with the peer's
     * address before it adopts the socket; the listening wsi has no
     * protocol bound, so find the server through the vhost. */
    if (!s)
      s = rn__vhost_server(wsi);
    return s ? rn__ip_filter(s, (const struct lws_filter_network_conn_args *)user) : 0;
  case LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED:
    if (!s)
      s = rn__vhost_server(wsi);
    if (s)
      rn__ip_count(s, wsi);
    return 0;
  case LWS_CALLBACK_WSI_DESTROY:
    if (!s)
      s = rn__vhost_server(wsi);
    if (s)
      rn__ip_uncount(s, wsi);
    return 0;
  case LWS_CALLBACK_HTTP:
    if (!s || !pss)
      return -1;
    if (s->closed)
      return rn__http_refuse(wsi, pss, 503);
    return rn__http_begin(s, wsi, pss);
  case LWS_CALLBACK_HTTP_BODY:
    return pss ? rn__http_body(pss, wsi, in, len) : -1;
  case LWS_CALLBACK_HTTP_BODY_COMPLETION:
    if (pss && pss->req && !pss->req->body_refused) {
      if (pss->req->body_len != pss->req->body_expect)
        return rn__http_refuse(wsi, pss, 400);
      rn__req_ready(pss->req);
    }
    return 0;
  case LWS_CALLBACK_HTTP_WRITEABLE:
    return pss ? rn__http_writeable(pss, wsi) : 0;
  case LWS_CALLBACK_CLOSED_HTTP:
    if (pss)
      rn__req_detach(pss);
    return 0;
  case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
    if (!s)
      return -1;
    if (!s->websocket || s->closed || !in || strcmp((const char *)in, "websocket")) {
      lws_return_http_status(wsi, s->closed ? 503 : 404, NULL);
      return 1;
    }
    {
      /* lws 4.1.6 upgrades without a version and with any version, and
       * drops a request without a key with no response (RFC 6455 4.2.2). */
      char ver[8];
      int vl = lws_hdr_copy(wsi, ver, sizeof ver, WSI_TOKEN_VERSION);
      if (lws_hdr_total_length(wsi, WSI_TOKEN_KEY) <= 0 || vl <= 0) {
        lws_return_http_status(wsi, 400, NULL);
        return 1;
      }
      if (strcmp(ver, "13"))
        return rn__refuse_version(wsi);
    }
    {
      char path[256];
      int rc;
      if (lws_hdr_copy(wsi, path, sizeof path, WSI_TOKEN_GET_URI) < 0)
        path[0] = '\0';
      rc = rn__protect_refuse(s, wsi, path);
      if (rc != 0)
        return rc < 0 ? -1 : 1;
    }
    if (!rn__origin_allowed(s, wsi)) {
      lws_return_http_status(wsi, 403, NULL);
      return 1;
    }
    if (s->nconns >= s->lim.max_connections) {
      s->counters.ws_refused_full++;
      s->L->counters.ws_refused_full++;
      lws_return_http_status(wsi, 503, NULL);
      return 1;
    }
    return 0;
  case LWS_CALLBACK_ESTABLISHED: {
    rn_conn *c;
    int plen;
    if (!s || !pss)
      return -1;
    c = rn__conn_new(s->L, s, 0);
    if (!c)
      return -1;
    pss->conn = c;
    pss->req = NULL;
    plen = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI);
    if (plen > 0) {
      c->path = (char *)malloc((size_t)plen + 1);
      if (c->path && lws_hdr_copy(wsi, c->path, plen + 1, WSI_TOKEN_GET_URI) < 0) {
        free(c->path);
        c->path = NULL;
      }
    }
    lws_get_peer_simple(wsi, c->peer, sizeof c->peer);
    rn__conn_established(c, wsi);
    return 0;
  }
  case LWS_CALLBACK_RECEIVE:
    if (!pss || !pss->conn)
      return -1;
    return rn__conn_receive(pss->conn, wsi, in, len);
  case LWS_CALLBACK_SERVER_WRITEABLE:
    if (!pss || !pss->conn)
      return 0;
    return rn__conn_writeable(pss->conn, wsi);
  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    if (pss && pss->conn) {
      rn_conn *c = pss->conn;
      int bad;
      if (c->close_sent)
        return -1; /* the reply to our close: done */
      bad = rn__conn_check_close(in, len);
      if (bad) {
        rn__conn_answer_close(c, bad);
        return -1;
      }
      rn__conn_peer_close(c, in, len);
    }
    return 0;
  case LWS_CALLBACK_CLOSED:
    if (pss && pss->conn) {
      rn_conn *c = pss->conn;
      pss->conn = NULL;
      rn__conn_closed(c);
    }
    return 0;
  default:
    break;
  }
  return lws_callback_http_dummy(wsi, reason, user, in, len);
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

/* ---- Lua: servers -------------------------------------------------------- */

/* lws calls this just before it frees a vhost (lws_vhost_destroy or context
 * destroy); until then the vhost points at s->protocols. */
static void rn__vhost_finalized(struct lws_vhost *vh, void *arg) {
  rn_server *s = (rn_server *)arg;
  (void)vh;
  if (s->finalized)
    return;
  s->finalized = 1;
  s->vh = NULL;
  s->closed = 1;
  rn__server_unref(s);
}

static rn_server *rn__server_check(lua_State *L, int idx) {
  rn_server **b = (rn_server **)luaL_checkudata(L, idx, RN_SERVER_MT);
  if (!*b)
    luaL_argerror(L, idx, "server object is released");
  return *b;
}

/* Finds out why a bind failed, for a precise error code. */
static int rn__bind_errno(const char *host, int port) {
  struct sockaddr_in sa;
  int fd = socket(AF_INET, SOCK_STREAM, 0), err = 0, one = 1;
  if (fd < 0)
    return errno;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  if (!host || inet_pton(AF_INET, host, &sa.sin_addr) != 1)
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
    err = errno;
  close(fd);
  return err;
}

/* core.listen{port=, host=, websocket=, origins={...}, <limits>} ->
 * server | nil, msg, code */
static int rn_listen(lua_State *L) {
  rn_loop *l;
  rn_server *s, **box;
  struct lws_context_creation_info info;
  char vname[64];
  lua_Integer port;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "port");
  port = luaL_optinteger(L, -1, 0);
  lua_pop(L, 1);
  if (port < 0 || port > 65535)
    return luaL_error(L, "relaynet: port must be 0..65535");
  l = rn__loop_ensure(L);

  s = (rn_server *)calloc(1, sizeof *s);
  if (!s)
    return luaL_error(L, "out of memory");
  s->L = l;
  s->refcnt = 1; /* the loop side, released at shutdown */
  s->next = l->servers;
  l->servers = s;
  box = (rn_server **)lua_newuserdatauv(L, sizeof *box, 1);
  *box = s;
  s->refcnt++;
  luaL_setmetatable(L, RN_SERVER_MT);

  rn__limits_from_table(L, 1, &s->lim);
  lua_getfield(L, 1, "websocket");
  s->websocket = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "host");
  if (!lua_isnil(L, -1)) {
    s->host = strdup(luaL_checkstring(L, -1));
    if (!s->host)
      return luaL_error(L, "out of memory");
  }
  lua_pop(L, 1);
  rn__protect_from_table(L, 1, s);
  lua_getfield(L, 1, "origins");
  if (lua_istable(L, -1)) {
    int i, n = (int)lua_rawlen(L, -1);
    s->origins = (char **)calloc((size_t)n + 1, sizeof(char *));
    if (!s->origins)
      return luaL_error(L, "out of memory");
    for (i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i);
      s->origins[i - 1] = strdup(luaL_checkstring(L, -1));
      s->norigins = i;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);

  s->protocols[0].name = "rn-server";
  s->protocols[0].callback = rn__server_callback;
  s->protocols[0].per_session_data_size = sizeof(rn_pss);
  s->protocols[0].rx_buffer_size = s->lim.rx_buffer;
  s->protocols[0].user = s;
  s->protocols[0].tx_packet_size = 65536; /* per send(); not an allocation */
  s->retry.secs_since_valid_ping = (uint16_t)s->lim.ping_interval;
  s->retry.secs_since_valid_hangup = (uint16_t)s->lim.pong_timeout;

  /* lws would share a port between vhosts (name-based virtual hosting);
   * relaynet servers own their port, so refuse a second one here. */
  if (port != 0) {
    rn_server *o;
    for (o = l->servers; o; o = o->next)
      if (o != s && o->vh && o->port == (int)port) {
        s->closed = 1;
        return rn__fail(L, "EADDRINUSE", "port %d is already in use", (int)port);
      }
  }

  memset(&info, 0, sizeof info);
  snprintf(vname, sizeof vname, "rn-%p", (void *)s);
  info.vhost_name = vname;
  info.port = (int)port;
  info.iface = s->host;
  info.protocols = s->protocols;
  /* Bind failures must fail here, not retry in the background. With IPv6
   * compiled in, lws 4.1.6 binds an IPv4 literal iface to "::" (every
   * interface): disable IPv6 for IPv4 literals so 127.0.0.1 means loopback. */
  info.options = LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND;
  {
    struct in_addr a4;
    if (s->host && inet_pton(AF_INET, s->host, &a4) == 1)
      info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
  }
  info.keepalive_timeout = 5;
  /* Always explicit: without a policy lws pings after 300 s. Zero disables. */
  info.retry_and_idle_policy = &s->retry;
  info.finalize = rn__vhost_finalized;
  info.finalize_arg = s;
  s->refcnt++; /* the vhost side, released by rn__vhost_finalized */
  s->vh = lws_create_vhost(l->ctx, &info);
  if (!s->vh) {
    /* lws finalizes a vhost that failed half-way; if it did not, drop the
     * vhost side's reference here. */
    if (!s->finalized) {
      s->finalized = 1;
      s->refcnt--;
    }
    int e = rn__bind_errno(s->host, (int)port);
    s->closed = 1;
    if (e == EADDRINUSE)
      return rn__fail(L, "EADDRINUSE", "port %d is already in use", (int)port);
    if (e == EACCES)
      return rn__fail(L, "EACCES", "no permission to listen on port %d", (int)port);
    if (e == EADDRNOTAVAIL)
      return rn__fail(L, "EADDRNOTAVAIL", "address %s is not available", s->host ? s->host : "*");
    return rn__fail(L, "ELISTEN", "cannot listen on %s:%d", s->host ? s->host : "*", (int)port);
  }
  s->port = lws_get_vhost_listen_port(s->vh);
  return 1;
}

static int rn_server_port(lua_State *L) {
  lua_pushinteger(L, rn__server_check(L, 1)->port);
  return 1;
}

/* Pushes a table of refusal counters (names as in rn_counters). */
void rn__counters_push(lua_State *L, const rn_counters *c) {
  lua_createtable(L, 0, 12);
  lua_pushinteger(L, (lua_Integer)c->conn_refused_per_ip);
  lua_setfield(L, -2, "conn_refused_per_ip");
  lua_pushinteger(L, (lua_Integer)c->http_body_timeouts);
  lua_setfield(L, -2, "http_body_timeouts");
  lua_pushinteger(L, (lua_Integer)c->http_body_too_large);
  lua_setfield(L, -2, "http_body_too_large");
  lua_pushinteger(L, (lua_Integer)c->ws_refused_full);
  lua_setfield(L, -2, "ws_refused_full");
  lua_pushinteger(L, (lua_Integer)c->ws_rate_closes);
  lua_setfield(L, -2, "ws_rate_closes");
  lua_pushinteger(L, (lua_Integer)c->ws_too_big);
  lua_setfield(L, -2, "ws_too_big");
  lua_pushinteger(L, (lua_Integer)c->ws_slow_closes);
  lua_setfield(L, -2, "ws_slow_closes");
  lua_pushinteger(L, (lua_Integer)c->protected_refused);
  lua_setfield(L, -2, "protected_refused");
  lua_pushinteger(L, (lua_Integer)c->buffer_send_refusals);
  lua_setfield(L, -2, "buffer_send_refusals");
  lua_pushinteger(L, (lua_Integer)c->buffer_rx_closes);
  lua_setfield(L, -2, "buffer_rx_closes");
  lua_pushinteger(L, (lua_Integer)c->buffer_body_refusals);
  lua_setfield(L, -2, "buffer_body_refusals");
  lua_pushinteger(L, (lua_Integer)c->buffer_evictions);
  lua_setfield(L, -2, "buffer_evictions");
}

/* server:stats() -> { <counters>, tcp_connections = n, websockets = n,
 * buffered = bytes }: this server's refusal counters since it started, the
 * TCP connections counted per address (0 when max_connections_per_ip is
 * off), the open WebSockets and the bytes it holds now against
 * max_buffered. */
static int rn_server_stats(lua_State *L) {
  rn_server *s = rn__server_check(L, 1);
  rn__counters_push(L, &s->counters);
  lua_pushinteger(L, s->nips_conns);
  lua_setfield(L, -2, "tcp_connections");
  lua_pushinteger(L, s->nconns);
  lua_setfield(L, -2, "websockets");
  lua_pushinteger(L, (lua_Integer)s->buffered);
  lua_setfield(L, -2, "buffered");
  return 1;
}

/* core.stats() -> the refusal counters summed over every server this
 * process has run (they survive core.shutdown()). */
static int rn_core_stats(lua_State *L) {
  rn__counters_push(L, &rn__loop_get(L)->counters);
  return 1;
}

static int rn_server_nconns(lua_State *L) {
  lua_pushinteger(L, rn__server_check(L, 1)->nconns);
  return 1;
}

/* server:close(): stops accepting; existing connections are closed by Lua
 * first. The vhost itself is destroyed with the context. */
static int rn_server_close(lua_State *L) {
  rn_server *s = rn__server_check(L, 1);
  int was = s->closed;
  s->closed = 1;
  lua_pushboolean(L, !was);
  return 1;
}

/* server:destroy(): marks the server finished. lws 4.1.6's
 * lws_vhost_destroy() never closes a listening vhost (it only queues a
 * deferred free that is never processed, and a later vhost on the same port
 * would share the socket and trip an assertion at context destroy), so the
 * listening socket stays open, answering 503, until the loop shuts down. */
static int rn_server_destroy(lua_State *L) {
  rn_server *s = rn__server_check(L, 1);
  s->closed = 1;
  return 0;
}

static int rn_server_gc(lua_State *L) {
  rn_server **b = (rn_server **)luaL_checkudata(L, 1, RN_SERVER_MT);
  if (*b) {
    rn_server *s = *b;
    *b = NULL;
    rn__server_unref(s);
  }
  return 0;
}

static int rn_server_tostring(lua_State *L) {
  rn_server **b = (rn_server **)luaL_checkudata(L, 1, RN_SERVER_MT);
  if (!*b)
    lua_pushliteral(L, "relaynet.server (released)");
  else
    lua_pushfstring(L, "relaynet.server port %d%s", (*b)->port, (*b)->closed ? " (closed)" : "");
  return 1;
}

/* Called by core.shutdown() after the lws context is gone. */
void rn__servers_release(rn_loop *l) {
  rn_server *s = l->servers, *next;
  l->servers = NULL; /* rn__server_unref must not find them any more */
  for (; s; s = next) {
    next = s->next;
    s->vh = NULL;
    s->closed = 1;
    rn__server_unref(s);
  }
}

void rn__server_open_lua(lua_State *L) {
  static const luaL_Reg smethods[] = {
    {"port", rn_server_port},
    {"connection_count", rn_server_nconns},
    {"stats", rn_server_stats},
    {"close", rn_server_close},
    {"destroy", rn_server_destroy},
    {NULL, NULL}};
  static const luaL_Reg smeta[] = {
    {"__gc", rn_server_gc},
    {"__tostring", rn_server_tostring},
    {NULL, NULL}};
  static const luaL_Reg rmethods[] = {
    {"info", rn_req_info},
    {"header", rn_req_header},
    {"respond", rn_req_respond},
    {NULL, NULL}};
  static const luaL_Reg rmeta[] = {
    {"__gc", rn_req_gc},
    {"__tostring", rn_req_tostring},
    {NULL, NULL}};
  luaL_newmetatable(L, RN_SERVER_MT);
  luaL_setfuncs(L, smeta, 0);
  luaL_newlib(L, smethods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newmetatable(L, RN_REQ_MT);
  luaL_setfuncs(L, rmeta, 0);
  luaL_newlib(L, rmethods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lua_pushcfunction(L, rn_listen);
  lua_setfield(L, -2, "listen");
  lua_pushcfunction(L, rn__limits_defaults);
  lua_setfield(L, -2, "default_limits");
  lua_pushcfunction(L, rn_core_stats);
  lua_setfield(L, -2, "stats");
}
