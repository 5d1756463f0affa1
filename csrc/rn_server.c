/*
 * relaynet core: listening servers (one lws vhost each), the server protocol
 * callback that serves HTTP (rn_http.c) and WebSocket (rn_conn.c) on one
 * port, the upgrade checks, the refusal counters, and the server's Lua type.
 *
 * An rn_server lives until the lws context is destroyed (lws keeps pointers
 * to its protocols array until then), so core.shutdown() releases the
 * loop's reference to every server; Lua boxes and live connections/requests
 * hold the others.
 */
#include "rn.h"

#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

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
  free(s->tls_cert);
  free(s->tls_key);
  free(s->tls_ca);
  free(s);
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
  case LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION:
    /* about an outgoing connection: see rn_client.c */
    return rn__client_cert_verdict(wsi, user, len);
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
    return rn__http_body_done(pss, wsi);
  case LWS_CALLBACK_HTTP_WRITEABLE:
    return pss ? rn__http_writeable(pss, wsi) : 0;
  case LWS_CALLBACK_CLOSED_HTTP:
    if (pss)
      rn__req_detach(pss);
    return 0;
  case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
    if (!s)
      return -1;
    /* The Upgrade token is case-insensitive (RFC 6455 4.2.1, RFC 9110 7.8):
     * clients send "websocket", "WebSocket", ... */
    if (!s->websocket && !s->closed)
      return rn__refuse_no_endpoint(wsi) < 0 ? -1 : 1;
    if (s->closed || !in || strcasecmp((const char *)in, "websocket")) {
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
      /* No WebSocket endpoint at this path: a dial to the wrong path
       * fails visibly instead of being accepted and never answered. */
      if (!rn__ws_path_ok(s, path))
        return rn__refuse_no_endpoint(wsi) < 0 ? -1 : 1;
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
    rn__peer_name(wsi, c->peer, sizeof c->peer);
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
    return pss && pss->conn ? rn__conn_on_peer_close(pss->conn, in, len) : 0;
  case LWS_CALLBACK_WS_SERVER_DROP_PROTOCOL:
    if (pss && pss->conn)
      rn__conn_lws_closing(pss->conn, wsi);
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

/* Reads tls = { cert =, key = [, ca =] [, require_client_cert =] } from the
 * options at idx into s, checking the files (rn_tls.c). Returns 0 (also when
 * there is no tls table), or -1 with nil, "ETLS: ...", "ETLS" pushed. Raises
 * on misuse (a field of the wrong type, a missing cert or key). */
static int rn__tls_from_table(lua_State *L, int idx, rn_server *s) {
  char err[320];
  lua_getfield(L, idx, "tls");
  if (lua_isnil(L, -1) || (lua_isboolean(L, -1) && !lua_toboolean(L, -1))) {
    lua_pop(L, 1);
    return 0;
  }
  luaL_argexpected(L, lua_istable(L, -1), idx, "tls to be a table { cert =, key = }");
  lua_getfield(L, -1, "cert");
  lua_getfield(L, -2, "key");
  lua_getfield(L, -3, "ca");
  lua_getfield(L, -4, "require_client_cert");
  if (!lua_isstring(L, -4) || !lua_isstring(L, -3))
    return luaL_error(L, "relaynet: tls needs cert and key (file names)");
  if (!lua_isnil(L, -2) && !lua_isstring(L, -2))
    return luaL_error(L, "relaynet: tls.ca must be a file name");
  s->tls_require_client_cert = lua_toboolean(L, -1);
  if (s->tls_require_client_cert && lua_isnil(L, -2))
    return luaL_error(L, "relaynet: tls.require_client_cert needs tls.ca");
  s->tls_cert = strdup(lua_tostring(L, -4));
  s->tls_key = strdup(lua_tostring(L, -3));
  s->tls_ca = lua_isnil(L, -2) ? NULL : strdup(lua_tostring(L, -2));
  if (!s->tls_cert || !s->tls_key || (!s->tls_ca && !lua_isnil(L, -2)))
    return luaL_error(L, "out of memory");
  lua_pop(L, 5);
  if (rn__tls_check_server(s->tls_cert, s->tls_key, s->tls_ca, err, sizeof err) < 0) {
    s->closed = 1;
    rn__fail(L, "ETLS", "%s", err);
    return -1;
  }
  return 0;
}

/* core.listen{port=, host=, websocket=, origins={...}, tls={...}, <limits>}
 * -> server | nil, msg, code */
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
  s->owner_ref = LUA_NOREF;
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
  if (rn__tls_from_table(L, 1, s) < 0)
    return 3; /* nil, "ETLS: ...", "ETLS" */
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
  if (s->tls_cert) {
    /* HTTPS and WSS on this port. Only HTTP/1.1 is offered by ALPN: lws
     * would otherwise speak HTTP/2 to browsers, where relaynet's request
     * and upgrade handling is not what it expects. */
    info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.ssl_cert_filepath = s->tls_cert;
    info.ssl_private_key_filepath = s->tls_key;
    info.ssl_ca_filepath = s->tls_ca;
    info.alpn = "http/1.1";
    if (s->tls_require_client_cert)
      info.options |= LWS_SERVER_OPTION_REQUIRE_VALID_OPENSSL_CLIENT_CERT;
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
    if (s->host)
      return rn__fail(L, "ELISTEN", "cannot listen on %s:%d (host must be an IP address or a network "
                      "interface name)", s->host, (int)port);
    return rn__fail(L, "ELISTEN", "cannot listen on *:%d", (int)port);
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
  lua_createtable(L, 0, 13);
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
  lua_pushinteger(L, (lua_Integer)c->token_refused);
  lua_setfield(L, -2, "token_refused");
  lua_pushinteger(L, (lua_Integer)c->buffer_send_refusals);
  lua_setfield(L, -2, "buffer_send_refusals");
  lua_pushinteger(L, (lua_Integer)c->buffer_rx_closes);
  lua_setfield(L, -2, "buffer_rx_closes");
  lua_pushinteger(L, (lua_Integer)c->buffer_body_refusals);
  lua_setfield(L, -2, "buffer_body_refusals");
  lua_pushinteger(L, (lua_Integer)c->buffer_evictions);
  lua_setfield(L, -2, "buffer_evictions");
}

/* Sets messages_in, messages_out, bytes_in and bytes_out of the table on
 * top of the stack from `t`. */
void rn__traffic_push(lua_State *L, const rn_traffic *t) {
  lua_pushinteger(L, (lua_Integer)t->msgs_in);
  lua_setfield(L, -2, "messages_in");
  lua_pushinteger(L, (lua_Integer)t->msgs_out);
  lua_setfield(L, -2, "messages_out");
  lua_pushinteger(L, (lua_Integer)t->bytes_in);
  lua_setfield(L, -2, "bytes_in");
  lua_pushinteger(L, (lua_Integer)t->bytes_out);
  lua_setfield(L, -2, "bytes_out");
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
  rn__traffic_push(L, &s->traffic);
  return 1;
}

/* core.stats() -> the refusal counters summed over every server this
 * process has run (they survive core.shutdown()). */
static int rn_core_stats(lua_State *L) {
  rn__counters_push(L, &rn__loop_get(L)->counters);
  return 1;
}

/* core.traffic() -> { messages_in, messages_out, bytes_in, bytes_out }:
 * the WebSocket messages (and their payload bytes) every connection of
 * this process received and wrote (they survive core.shutdown()). */
static int rn_core_traffic(lua_State *L) {
  lua_createtable(L, 0, 4);
  rn__traffic_push(L, &rn__loop_get(L)->traffic);
  return 1;
}

static int rn_server_nconns(lua_State *L) {
  lua_pushinteger(L, rn__server_check(L, 1)->nconns);
  return 1;
}

/* server:close(): stops accepting; existing connections are closed by Lua
 * first. Returns true the first time. The vhost itself is destroyed with
 * the context: lws 4.1.6's lws_vhost_destroy() never closes a listening
 * vhost (it only queues a deferred free that is never processed, and a
 * later vhost on the same port would share the socket and trip an
 * assertion at context destroy), so the listening socket stays open,
 * answering 503, until the loop shuts down. */
static int rn_server_close(lua_State *L) {
  rn_server *s = rn__server_check(L, 1);
  int was = s->closed;
  s->closed = 1;
  lua_pushboolean(L, !was);
  return 1;
}

/* Drops the server's owner reference (see server:set_owner). */
static void rn__owner_unref(lua_State *L, rn_server *s) {
  if (s->owner_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, s->owner_ref);
    s->owner_ref = LUA_NOREF;
  }
}

/* server:set_owner(value): the Lua value pushed with every OPEN and HTTP
 * event of this server (the facade's Server object), so dispatch knows the
 * server without a look-up. nil drops it: events then carry nil and are
 * refused as for a closed server. The registry holds the value until then,
 * or until core.shutdown(). */
static int rn_server_set_owner(lua_State *L) {
  rn_server *s = rn__server_check(L, 1);
  lua_settop(L, 2);
  rn__owner_unref(L, s);
  if (!lua_isnil(L, 2))
    s->owner_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

void rn__server_push_owner(lua_State *L, rn_server *s) {
  if (s && s->owner_ref != LUA_NOREF)
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->owner_ref);
  else
    lua_pushnil(L);
}

static int rn_server_gc(lua_State *L) {
  rn_server **b = (rn_server **)luaL_checkudata(L, 1, RN_SERVER_MT);
  if (*b) {
    rn_server *s = *b;
    *b = NULL;
    rn__owner_unref(L, s);
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
void rn__servers_release(lua_State *L, rn_loop *l) {
  rn_server *s = l->servers, *next;
  l->servers = NULL; /* rn__server_unref must not find them any more */
  for (; s; s = next) {
    next = s->next;
    s->vh = NULL;
    s->closed = 1;
    rn__owner_unref(L, s);
    rn__server_unref(s);
  }
}

void rn__server_open_lua(lua_State *L) {
  static const luaL_Reg smethods[] = {
    {"port", rn_server_port},
    {"connection_count", rn_server_nconns},
    {"stats", rn_server_stats},
    {"close", rn_server_close},
    {"set_owner", rn_server_set_owner},
    {"ws_accept_any", rn__server_ws_accept_any},
    {NULL, NULL}};
  static const luaL_Reg smeta[] = {
    {"__gc", rn_server_gc},
    {"__tostring", rn_server_tostring},
    {NULL, NULL}};
  luaL_newmetatable(L, RN_SERVER_MT);
  luaL_setfuncs(L, smeta, 0);
  luaL_newlib(L, smethods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  rn__req_open_lua(L);
  lua_pushcfunction(L, rn_listen);
  lua_setfield(L, -2, "listen");
  lua_pushcfunction(L, rn__limits_defaults);
  lua_setfield(L, -2, "default_limits");
  lua_pushcfunction(L, rn_core_stats);
  lua_setfield(L, -2, "stats");
  lua_pushcfunction(L, rn_core_traffic);
  lua_setfield(L, -2, "traffic");
}
