/*
 * Protected mode: paths that only loopback peers may use.
 *
 * A server may name a set of protected paths (the Lua facade names the mesh
 * and JSON-RPC ones: /ws/p2p, /rpc and the mesh views, until the mesh has
 * credentials). A request or WebSocket upgrade for a protected path from a
 * peer that is not on the loopback network (127.0.0.0/8, ::1, or an IPv4
 * loopback address mapped into IPv6) is answered 403 with a plain-text body
 * saying how to allow it, before any Lua code runs. The address comes from
 * the socket (getpeername), never from a header.
 *
 * Token paths: with a bearer token set (--rpc-token: JSON-RPC and the mesh
 * views), those paths need "Authorization: Bearer <token>" from every peer,
 * loopback included, compared in constant time; without it they answer 401.
 * A token path is not also loopback-only: the token is the credential.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "rn.h"

#include <openssl/crypto.h>

/* Is the connection's peer on the loopback network? 0 when unknown. */
int rn__peer_is_loopback(struct lws *wsi) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  lws_sockfd_type fd = lws_get_socket_fd(wsi);
  if (fd < 0 || getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
    return 0;
  if (ss.ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
    return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
  }
  if (ss.ss_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)&ss)->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(a))
      return 1;
    return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
  }
  return 0;
}

/* Reads the list of exact paths in field `name` of the options at idx (nil:
 * none) into *paths / *n. */
static void rn__paths_from_table(lua_State *L, int idx, const char *name, char ***paths, int *n) {
  int i, len;
  lua_getfield(L, idx, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  luaL_checktype(L, -1, LUA_TTABLE);
  len = (int)lua_rawlen(L, -1);
  *paths = (char **)calloc((size_t)len + 1, sizeof(char *));
  if (!*paths)
    luaL_error(L, "out of memory");
  for (i = 1; i <= len; i++) {
    lua_rawgeti(L, -1, i);
    (*paths)[i - 1] = strdup(luaL_checkstring(L, -1));
    if (!(*paths)[i - 1])
      luaL_error(L, "out of memory");
    *n = i;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static void rn__paths_free(char ***paths, int *n) {
  int i;
  for (i = 0; i < *n; i++)
    free((*paths)[i]);
  free(*paths);
  *paths = NULL;
  *n = 0;
}

/* Reads opts.protected_paths, opts.token_paths and opts.token (a string of
 * 16 to 256 bytes, needed with token_paths) into s. */
void rn__protect_from_table(lua_State *L, int idx, rn_server *s) {
  size_t tlen = 0;
  const char *token;
  rn__paths_from_table(L, idx, "protected_paths", &s->protected_paths, &s->nprotected);
  rn__paths_from_table(L, idx, "token_paths", &s->token_paths, &s->ntoken_paths);
  lua_getfield(L, idx, "ws_paths");
  s->ws_listed_only = !lua_isnil(L, -1);
  lua_pop(L, 1);
  rn__paths_from_table(L, idx, "ws_paths", &s->ws_paths, &s->nws_paths);
  lua_getfield(L, idx, "token");
  token = lua_tolstring(L, -1, &tlen);
  if (s->ntoken_paths && (!token || tlen < 16 || tlen > 256))
    luaL_error(L, "relaynet: token must be a string of 16 to 256 bytes");
  if (token && s->ntoken_paths) {
    /* kept as the whole header value, "Bearer <token>" */
    s->token = (char *)malloc(tlen + 8);
    if (!s->token)
      luaL_error(L, "out of memory");
    memcpy(s->token, "Bearer ", 7);
    memcpy(s->token + 7, token, tlen);
    s->token[tlen + 7] = '\0';
    s->token_len = tlen + 7;
  }
  lua_pop(L, 1);
}

void rn__protect_free(rn_server *s) {
  rn__paths_free(&s->protected_paths, &s->nprotected);
  rn__paths_free(&s->token_paths, &s->ntoken_paths);
  rn__paths_free(&s->ws_paths, &s->nws_paths);
  if (s->token) {
    OPENSSL_cleanse(s->token, s->token_len);
    free(s->token);
  }
  s->token = NULL;
  s->token_len = 0;
}

static const char rn__protect_body[] =
  "403 Forbidden: relaynet protected mode. This path (the mesh link, JSON-RPC or a mesh view)\n"
  "answers loopback peers only, because this node has no mesh credentials.\n"
  "To serve it to other addresses, start the node with --insecure-mesh\n"
  "(HttpServer.listen{ insecure_mesh = true }), which logs a warning, or turn the\n"
  "mesh routes off with --no-mesh (HttpServer.listen{ mesh = false }).\n";

static const char rn__token_body[] =
  "401 Unauthorized: this path (JSON-RPC or a mesh view) needs the node's bearer token:\n"
  "send the header \"Authorization: Bearer <token>\" with the token the node was\n"
  "started with (--rpc-token FILE).\n";

/* Writes a whole response with a hand-made status line (see below). */
static int rn__write_status(struct lws *wsi, const char *status, const char *extra, const char *body,
                            size_t blen) {
  unsigned char buf[LWS_PRE + 1024];
  unsigned char *start = buf + LWS_PRE;
  int n = snprintf((char *)start, sizeof buf - LWS_PRE,
                   "HTTP/1.1 %s\r\ncontent-type: text/plain; charset=utf-8\r\n%s"
                   "content-length: %u\r\nconnection: close\r\n\r\n%s",
                   status, extra, (unsigned)blen, body);
  if (n < 0 || (size_t)n >= sizeof buf - LWS_PRE)
    return -1;
  if (lws_write(wsi, start, (size_t)n, LWS_WRITE_RAW) < 0)
    return -1;
  return 1;
}

/* 1 when the request carries "Authorization: <s->token>" (constant time). */
static int rn__token_ok(rn_server *s, struct lws *wsi) {
  char got[300];
  int n = lws_hdr_copy(wsi, got, sizeof got, WSI_TOKEN_HTTP_AUTHORIZATION);
  return n > 0 && (size_t)n == s->token_len && CRYPTO_memcmp(got, s->token, s->token_len) == 0;
}

static int rn__path_in(char **paths, int n, const char *path) {
  int i;
  for (i = 0; i < n; i++)
    if (!strcmp(paths[i], path))
      return 1;
  return 0;
}

/* When `path` is protected on s and the peer is not on loopback, writes the
 * 403 response and returns 1 (the caller then ends the transaction, or
 * returns 1 from CONFIRM_UPGRADE); a token path without the right token gets
 * 401 the same way. Returns -1 if the write failed and 0 when the request
 * may go on. Counts each refusal (protected_refused, token_refused).
 *
 * The status line is written by hand: while an upgrade is being confirmed,
 * lws 4.1.6 has not yet recorded the request's HTTP version and its header
 * helpers would answer "HTTP/1.0", which WebSocket clients reject as an
 * invalid response instead of reporting the 403. */
int rn__protect_refuse(rn_server *s, struct lws *wsi, const char *path) {
  if (!path)
    return 0;
  if (s->ntoken_paths && rn__path_in(s->token_paths, s->ntoken_paths, path)) {
    if (rn__token_ok(s, wsi))
      return 0;
    s->counters.token_refused++;
    s->L->counters.token_refused++;
    return rn__write_status(wsi, "401 Unauthorized", "www-authenticate: Bearer realm=\"relaynet\"\r\n",
                            rn__token_body, sizeof rn__token_body - 1);
  }
  if (!s->nprotected || !rn__path_in(s->protected_paths, s->nprotected, path) || rn__peer_is_loopback(wsi))
    return 0;
  s->counters.protected_refused++;
  s->L->counters.protected_refused++;
  return rn__write_status(wsi, "403 Forbidden", "", rn__protect_body, sizeof rn__protect_body - 1);
}

static const char rn__no_endpoint_body[] =
  "404 Not Found: no WebSocket endpoint at this path. A relaynet mesh link is\n"
  "at /ws/p2p, JSON-RPC at /rpc; the server's own WebSocket paths are served\n"
  "once it has a connect, message or close handler.\n";

/* Answers an upgrade that has no endpoint with 404 (a hand-made status
 * line, as in rn__protect_refuse). Returns 1, or -1 if the write failed. */
int rn__refuse_no_endpoint(struct lws *wsi) {
  return rn__write_status(wsi, "404 Not Found", "", rn__no_endpoint_body, sizeof rn__no_endpoint_body - 1);
}

int rn__ws_path_ok(rn_server *s, const char *path) {
  return !s->ws_listed_only || (path && rn__path_in(s->ws_paths, s->nws_paths, path));
}

/* server:ws_accept_any(): from now on a WebSocket upgrade is accepted on
 * every path (the script registered a connect, message or close handler). */
int rn__server_ws_accept_any(lua_State *L) {
  rn_server *s = *(rn_server **)luaL_checkudata(L, 1, RN_SERVER_MT);
  if (s)
    s->ws_listed_only = 0;
  return 0;
}
