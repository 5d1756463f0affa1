/*
 * relaynet core: TCP connections per source address, for
 * max_connections_per_ip. A server counts its accepted sockets per address
 * in a hash table of RN_IP_BUCKETS chains (allocated on the first accept);
 * a new socket past the limit is closed before lws adopts it. Also the
 * peer's address as text, for info() and the logs.
 */
#include "rn.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

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

void rn__ips_free(rn_server *s) {
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
int rn__ip_filter(rn_server *s, const struct lws_filter_network_conn_args *a) {
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
void rn__ip_count(rn_server *s, struct lws *wsi) {
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
void rn__ip_uncount(rn_server *s, struct lws *wsi) {
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

/* Writes the peer address of `wsi` into buf (len bytes, NUL-terminated):
 * lws's text form, except that an IPv4 peer of a socket listening on every
 * interface (an IPv4-mapped IPv6 address, "::ffff:a.b.c.d") is written as
 * plain "a.b.c.d", as users know it. */
void rn__peer_name(struct lws *wsi, char *buf, size_t len) {
  static const char mapped[] = "::ffff:";
  size_t n = sizeof mapped - 1;
  lws_get_peer_simple(wsi, buf, len);
  buf[len - 1] = '\0';
  if (!strncmp(buf, mapped, n) && strchr(buf + n, '.'))
    memmove(buf, buf + n, strlen(buf + n) + 1);
}
