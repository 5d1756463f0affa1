/*
 * relaynet core: outgoing WebSocket connections and asynchronous DNS.
 *
 * lws resolves names with a blocking getaddrinfo(), so the Lua layer first
 * resolves with core.resolve() (uv_getaddrinfo on the uv thread pool) and
 * then connects to the numeric address.
 *
 * TLS (wss://): lws binds a client's TLS context to the vhost it connects
 * through, so the loop keeps one client vhost per CA file named by a
 * connect, made on first use, besides the default one, which verifies
 * against the system's CA store. Certificates are verified, and so is the
 * host name (the Host header's name, or the address), unless the connect
 * asks for insecure.
 */
#include "rn.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

static int rn__client_callback(struct lws *wsi, enum lws_callback_reasons reason,
                               void *user, void *in, size_t len);

static const struct lws_protocols rn__client_protocols[2] = {
  {"rn-client", rn__client_callback, 0, 4096, 0, NULL, 65536},
  {NULL, NULL, 0, 0, 0, NULL, 0}};

/* The client vhost for `ca` (NULL: the system's CA store), made on first
 * use. Returns NULL with a message in err when it cannot be made. */
static struct lws_vhost *rn__client_vhost(rn_loop *l, const char *ca, char *err, size_t errlen) {
  struct lws_context_creation_info info;
  struct lws_vhost *vh;
  char name[32];
  int i;
  for (i = 0; i < l->nclient_vh; i++)
    if ((!ca && !l->client_ca[i]) || (ca && l->client_ca[i] && !strcmp(ca, l->client_ca[i])))
      return l->client_vh[i];
  if (!ca && l->nclient_vh > 0) {
    snprintf(err, errlen, "the default client vhost is missing");
    return NULL;
  }
  if (ca && l->nclient_vh == 0 && !rn__client_vhost(l, NULL, err, errlen))
    return NULL; /* [0] is always the default one */
  if (l->nclient_vh == RN_CLIENT_VHOSTS) {
    snprintf(err, errlen, "at most %d different CA files per process", RN_CLIENT_VHOSTS - 1);
    return NULL;
  }
  if (ca && rn__tls_check_ca(ca, err, errlen) < 0)
    return NULL;
  memset(&info, 0, sizeof info);
  snprintf(name, sizeof name, "rn-client-%d", l->nclient_vh);
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.protocols = rn__client_protocols;
  info.vhost_name = name;
  info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
  info.client_ssl_ca_filepath = ca;
  info.alpn = "http/1.1";
  vh = lws_create_vhost(l->ctx, &info);
  if (!vh) {
    snprintf(err, errlen, "cannot set up client TLS%s%s", ca ? " with " : "", ca ? ca : "");
    return NULL;
  }
  l->client_ca[l->nclient_vh] = ca ? strdup(ca) : NULL;
  l->client_vh[l->nclient_vh++] = vh;
  return vh;
}

/* Forgets the client vhosts (the lws context that owned them is gone). */
void rn__client_vhosts_forget(rn_loop *l) {
  int i;
  for (i = 0; i < l->nclient_vh; i++) {
    free(l->client_ca[i]);
    l->client_ca[i] = NULL;
    l->client_vh[i] = NULL;
  }
  l->nclient_vh = 0;
}


/* LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION (lws sends it to
 * protocol 0 of its newest vhost, a server's or a client's, so both
 * callbacks pass it here): when OpenSSL refused the server's certificate,
 * keeps its reason for the connection's error, which lws would only give
 * as "SSL err 1". Returns 0: the verdict stays OpenSSL's. */
int rn__client_cert_verdict(struct lws *wsi, void *x509_ctx, size_t preverify_ok) {
  rn_conn *c = wsi ? (rn_conn *)lws_get_opaque_user_data(wsi) : NULL;
  int err;
  if (preverify_ok || !c || !c->cl || !x509_ctx)
    return 0;
  err = X509_STORE_CTX_get_error((X509_STORE_CTX *)x509_ctx);
  if (err != X509_V_OK && !c->cl->cert_error[0])
    snprintf(c->cl->cert_error, sizeof c->cl->cert_error, "%s", X509_verify_cert_error_string(err));
  return 0;
}

static void rn__client_failed(rn_conn *c, struct lws *wsi, const char *msg, size_t len) {
  char buf[160];
  rn_event ev;
  if (c->cl && c->cl->cert_error[0]) {
    /* ECERT in relaynet.client: the message says "certificate". */
    snprintf(buf, sizeof buf, "certificate verify failed: %s", c->cl->cert_error);
    msg = buf;
    len = strlen(buf);
  }
  if (wsi)
    lws_set_opaque_user_data(wsi, NULL);
  if (c->state == RN_CS_CLOSED)
    return;
  memset(&ev, 0, sizeof ev);
  ev.type = RN_EV_CONNERR;
  ev.conn = c;
  if (msg && len) {
    ev.data = (char *)malloc(len);
    if (ev.data) {
      memcpy(ev.data, msg, len);
      ev.len = len;
    }
  }
  rn__event_push(c->L, &ev);
  c->wsi = NULL;
  c->state = RN_CS_CLOSED;
  rn__conn_unref(c); /* the lws side */
}

static int rn__client_callback(struct lws *wsi, enum lws_callback_reasons reason,
                               void *user, void *in, size_t len) {
  rn_conn *c = wsi ? (rn_conn *)lws_get_opaque_user_data(wsi) : NULL;
  (void)user;
  switch (reason) {
  case LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION:
    return rn__client_cert_verdict(wsi, user, len);
  case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
    if (c) {
      const char *msg = in ? (const char *)in : "connection failed";
      char buf[160];
      unsigned int status = wsi ? lws_http_client_http_response(wsi) : 0;
      /* lws says only "HS: ws upgrade response not 101": name the status
       * the server answered (404: no WebSocket endpoint at that path). */
      if (status && status != 101 && strstr(msg, "not 101")) {
        snprintf(buf, sizeof buf, "the server answered HTTP %u instead of upgrading to WebSocket", status);
        msg = buf;
      }
      rn__client_failed(c, wsi, msg, strlen(msg));
    }
    return 0;
  case LWS_CALLBACK_CLIENT_ESTABLISHED:
    if (!c)
      return -1;
    if (c->state != RN_CS_CONNECTING)
      return -1; /* closed by Lua while connecting */
    rn__peer_name(wsi, c->peer, sizeof c->peer);
    rn__conn_established(c, wsi);
    return 0;
  case LWS_CALLBACK_CLIENT_RECEIVE:
    if (!c)
      return -1;
    return rn__conn_receive(c, wsi, in, len);
  case LWS_CALLBACK_CLIENT_WRITEABLE:
    if (!c)
      return 0;
    return rn__conn_writeable(c, wsi);
  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    return c ? rn__conn_on_peer_close(c, in, len) : 0;
  case LWS_CALLBACK_CLIENT_CLOSED:
    if (c) {
      lws_set_opaque_user_data(wsi, NULL);
      rn__conn_closed(c);
    }
    return 0;
  case LWS_CALLBACK_WSI_DESTROY:
    /* Safety net: a wsi that dies without CLIENT_CLOSED or an error. */
    if (c) {
      lws_set_opaque_user_data(wsi, NULL);
      if (c->opened)
        rn__conn_closed(c);
      else
        rn__client_failed(c, NULL, "connection closed before the handshake", 38);
    }
    return 0;
  default:
    break;
  }
  return 0;
}

static char *rn__optdup(lua_State *L, int idx, const char *field) {
  char *r = NULL;
  lua_getfield(L, idx, field);
  if (!lua_isnil(L, -1)) {
    r = strdup(luaL_checkstring(L, -1));
    if (!r)
      luaL_error(L, "out of memory");
  }
  lua_pop(L, 1);
  return r;
}

/* core.connect{address=, port=, path=, host=, origin=, protocol=, tls=,
 * ca=, insecure=, <limits>} -> conn (connecting) | nil, msg, code.
 * RN_EV_OPEN or RN_EV_CONNERR follows. tls: connect with TLS, verifying
 * the certificate against ca (a PEM file) or the system's CA store, and
 * the host name; insecure: accept any certificate and name. */
static int rn_connect(lua_State *L) {
  rn_loop *l;
  rn_conn *c;
  rn_client_opts *cl;
  struct lws_client_connect_info ci;
  struct lws *wsi = NULL;
  struct lws_vhost *vh;
  lua_Integer port;
  int tls, insecure;
  char err[320];
  luaL_checktype(L, 1, LUA_TTABLE);
  l = rn__loop_ensure(L);
  lua_getfield(L, 1, "tls");
  tls = lua_toboolean(L, -1);
  lua_getfield(L, 1, "insecure");
  insecure = lua_toboolean(L, -1);
  lua_getfield(L, 1, "ca");
  if (!lua_isnil(L, -1) && !lua_isstring(L, -1))
    return luaL_error(L, "relaynet: ca must be a file name");
  vh = rn__client_vhost(l, tls ? lua_tostring(L, -1) : NULL, err, sizeof err);
  lua_pop(L, 3);
  if (!vh)
    return rn__fail(L, "ETLS", "%s", err);
  lua_getfield(L, 1, "port");
  port = luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  if (port <= 0 || port > 65535)
    return luaL_error(L, "relaynet: port must be 1..65535");
  c = rn__conn_new(l, NULL, 1);
  if (!c)
    return luaL_error(L, "out of memory");
  rn__conn_push(L, c); /* the box keeps c alive whatever lws does below */
  cl = c->cl;
  rn__limits_from_table(L, 1, &cl->lim);
  cl->address = rn__optdup(L, 1, "address");
  cl->path = rn__optdup(L, 1, "path");
  cl->host = rn__optdup(L, 1, "host");
  cl->origin = rn__optdup(L, 1, "origin");
  cl->protocol = rn__optdup(L, 1, "protocol");
  cl->port = (int)port;
  if (!cl->address)
    return luaL_error(L, "relaynet: connect needs an address");
  c->path = strdup(cl->path ? cl->path : "/");
  cl->retry.secs_since_valid_ping = (uint16_t)cl->lim.ping_interval;
  cl->retry.secs_since_valid_hangup = (uint16_t)cl->lim.pong_timeout;

  memset(&ci, 0, sizeof ci);
  ci.context = l->ctx;
  ci.vhost = vh;
  if (tls) {
    ci.ssl_connection = LCCSCF_USE_SSL;
    if (insecure)
      ci.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_ALLOW_INSECURE |
                           LCCSCF_ALLOW_EXPIRED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK;
    ci.alpn = "http/1.1";
  }
  ci.address = cl->address;
  ci.port = cl->port;
  ci.path = cl->path ? cl->path : "/";
  ci.host = cl->host ? cl->host : cl->address;
  ci.origin = cl->origin;
  ci.protocol = cl->protocol;
  ci.local_protocol_name = "rn-client";
  ci.ietf_version_or_minus_one = -1;
  ci.opaque_user_data = c;
  ci.pwsi = &wsi;
  ci.retry_and_idle_policy = &cl->retry; /* explicit: zero disables */
  c->refcnt++; /* held across the call in case lws fails synchronously */
  if (!lws_client_connect_via_info(&ci)) {
    int failed_already = c->state == RN_CS_CLOSED;
    if (!failed_already) {
      c->state = RN_CS_CLOSED;
      rn__conn_unref(c); /* the lws side */
    }
    rn__conn_unref(c);
    return rn__fail(L, "ECONNREFUSED", "cannot connect to %s:%d", cl->address, cl->port);
  }
  if (c->state == RN_CS_CONNECTING)
    c->wsi = wsi;
  rn__conn_unref(c);
  return 1;
}

typedef struct rn_resolve {
  uv_getaddrinfo_t req;
  rn_loop *l;
  uint64_t ticket;
} rn_resolve;

static void rn__resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  rn_resolve *r = (rn_resolve *)req->data;
  rn_event ev;
  char addr[64] = "";
  memset(&ev, 0, sizeof ev);
  ev.type = RN_EV_RESOLVED;
  ev.ticket = r->ticket;
  if (status == 0 && res) {
    if (res->ai_family == AF_INET)
      uv_ip4_name((struct sockaddr_in *)res->ai_addr, addr, sizeof addr);
    else
      uv_ip6_name((struct sockaddr_in6 *)res->ai_addr, addr, sizeof addr);
    ev.flag = 1;
    ev.data = strdup(addr);
  } else {
    const char *msg = uv_strerror(status ? status : UV_EAI_NONAME);
    ev.data = strdup(msg);
  }
  ev.len = ev.data ? strlen(ev.data) : 0;
  if (res)
    uv_freeaddrinfo(res);
  rn__event_push(r->l, &ev);
  free(r);
}

/* core.resolve(host) -> ticket; RN_EV_RESOLVED(ticket, address, err) follows. */
static int rn_resolve_host(lua_State *L) {
  rn_loop *l = rn__loop_ensure(L);
  const char *host = luaL_checkstring(L, 1);
  struct addrinfo hints;
  rn_resolve *r = (rn_resolve *)malloc(sizeof *r);
  int rc;
  if (!r)
    return luaL_error(L, "out of memory");
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  r->l = l;
  r->ticket = l->next_ticket++;
  r->req.data = r;
  rc = uv_getaddrinfo(&l->loop, &r->req, rn__resolved, host, NULL, &hints);
  if (rc != 0) {
    free(r);
    return rn__fail(L, "ERESOLVE", "cannot resolve %s: %s", host, uv_strerror(rc));
  }
  lua_pushinteger(L, (lua_Integer)r->ticket);
  return 1;
}

void rn__client_open_lua(lua_State *L) {
  lua_pushcfunction(L, rn_connect);
  lua_setfield(L, -2, "connect");
  lua_pushcfunction(L, rn_resolve_host);
  lua_setfield(L, -2, "resolve");
}
