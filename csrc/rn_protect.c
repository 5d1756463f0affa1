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
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "rn.h"

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

/* Reads opts.protected_paths (a list of exact paths, or nil) into s. */
void rn__protect_from_table(lua_State *L, int idx, rn_server *s) {
  int i, n;
  lua_getfield(L, idx, "protected_paths");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  luaL_checktype(L, -1, LUA_TTABLE);
  n = (int)lua_rawlen(L, -1);
  s->protected_paths = (char **)calloc((size_t)n + 1, sizeof(char *));
  if (!s->protected_paths)
    luaL_error(L, "out of memory");
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    s->protected_paths[i - 1] = strdup(luaL_checkstring(L, -1));
    if (!s->protected_paths[i - 1])
      luaL_error(L, "out of memory");
    s->nprotected = i;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

void rn__protect_free(rn_server *s) {
  int i;
  for (i = 0; i < s->nprotected; i++)
    free(s->protected_paths[i]);
  free(s->protected_paths);
  s->protected_paths = NULL;
  s->nprotected = 0;
}

static const char rn__protect_body[] =
  "403 Forbidden: relaynet protected mode. This path (the mesh link, JSON-RPC or a mesh view)\n"
  "answers loopback peers only, because this node has no mesh credentials.\n"
  "To serve it to other addresses, start the node with --insecure-mesh\n"
  "(HttpServer.listen{ insecure_mesh = true }), which logs a warning, or turn the\n"
  "mesh routes off with --no-mesh (HttpServer.listen{ mesh = false }).\n";

/* When `path` is protected on s and the peer is not on loopback, writes the
 * 403 response and returns 1 (the caller then ends the transaction, or
 * returns 1 from CONFIRM_UPGRADE); returns -1 if the write failed and 0 when
 * the request may go on. Counts each refusal (protected_refused).
 *
 * The status line is written by hand: while an upgrade is being confirmed,
 * lws 4.1.6 has not yet recorded the request's HTTP version and its header
 * helpers would answer "HTTP/1.0", which WebSocket clients reject as an
 * invalid response instead of reporting the 403. */
int rn__protect_refuse(rn_server *s, struct lws *wsi, const char *path) {
  unsigned char buf[LWS_PRE + 1024];
  unsigned char *start = buf + LWS_PRE;
  int i, n, hit = 0;
  if (!s->nprotected || !path)
    return 0;
  for (i = 0; i < s->nprotected && !hit; i++)
    hit = !strcmp(s->protected_paths[i], path);
  if (!hit || rn__peer_is_loopback(wsi))
    return 0;
  s->counters.protected_refused++;
  s->L->counters.protected_refused++;
  n = snprintf((char *)start, sizeof buf - LWS_PRE,
               "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\n"
               "content-length: %u\r\nconnection: close\r\n\r\n%s",
               (unsigned)(sizeof rn__protect_body - 1), rn__protect_body);
  if (n < 0 || (size_t)n >= sizeof buf - LWS_PRE)
    return -1;
  if (lws_write(wsi, start, (size_t)n, LWS_WRITE_RAW) < 0)
    return -1;
  return 1;
}
