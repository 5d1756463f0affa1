/*
 * relaynet core: the WebSocket closing handshake, and the closes the core
 * decides by itself.
 *
 * A close starts with rn__conn_start_close (from Lua, gracefully: queued
 * messages go first) or rn__conn_fail (from a receive callback, at once).
 * The close frame is written when a message could be (rn__conn_direct),
 * else from the WRITEABLE callback (rn__conn_writeable); the
 * socket is dropped when the peer answers or after a deadline. A peer's
 * close frame is checked here (RFC 6455 7.4) for both server and client
 * connections (rn__conn_on_peer_close).
 *
 * The core closes on its own a consumer that stays above send_high_water
 * for slow_timeout (rn__conn_sweep) and, when a server's max_buffered
 * budget is full, its slowest consumer (rn__evict).
 */
#include "rn.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* lws_set_timeout() from outside lws does not re-arm lws's uv timer in
 * 4.1.6 (it could fire up to ~30 s late): lws_cancel_service() makes lws
 * look at its timers again. Harmless when called from inside a callback. */
static void rn__conn_set_timeout(rn_conn *c, int secs) {
  lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_ACK, secs);
  lws_cancel_service(c->L->ctx);
}

/* Keeps a copy of a close reason (at most 123 bytes) in *dst. A reason that
 * cannot be allocated is dropped: the close code still goes out. */
static void rn__set_reason(char **dst, uint8_t *dlen, const void *src, size_t len) {
  free(*dst);
  *dst = NULL;
  *dlen = 0;
  if (len > 123)
    len = 123;
  if (len == 0 || !(*dst = (char *)malloc(len)))
    return;
  memcpy(*dst, src, len);
  *dlen = (uint8_t)len;
}

/* Writes a close frame with the given code and reason now. The caller has
 * checked that nothing else is queued and no partial write is pending. */
static void rn__close_frame(rn_conn *c, int code, const char *reason, int rlen) {
  unsigned char buf[LWS_PRE + 2 + 123];
  if (!c->wsi || c->close_sent)
    return;
  if (rlen > 123)
    rlen = 123;
  buf[LWS_PRE] = (unsigned char)((code >> 8) & 0xff);
  buf[LWS_PRE + 1] = (unsigned char)(code & 0xff);
  if (rlen > 0)
    memcpy(buf + LWS_PRE + 2, reason, (size_t)rlen);
  c->close_sent = 1;
  lws_write(c->wsi, buf + LWS_PRE, (size_t)(2 + rlen), RN_WRITE_CLOSE);
  /* Wait a little for the peer's close reply, then drop the socket. */
  rn__conn_set_timeout(c, 3);
}

/* Starts closing with code/reason: after the queue drains when graceful, at
 * once (queue dropped) otherwise. */
void rn__conn_start_close(rn_conn *c, int code, const char *reason, int rlen, int graceful) {
  if (!c->wsi || c->state >= RN_CS_CLOSING)
    return;
  c->state = RN_CS_CLOSING;
  c->close_code = code;
  if (rlen > 123)
    rlen = 123;
  rn__set_reason(&c->close_reason, &c->close_reason_len, reason, (size_t)rlen);
  if (!graceful)
    rn__sendq_clear(c);
  if (rn__conn_direct(c))
    rn__close_frame(c, code, reason, rlen);
  else
    lws_callback_on_writable(c->wsi);
  if (!graceful && !c->close_sent)
    rn__conn_set_timeout(c, 2);
}

/* Fails the connection from inside a receive callback with `code`: the close
 * frame goes out now (or as soon as a partial write drains), later input is
 * discarded, and the socket is dropped when the peer answers or after 2 s.
 * Returning 0 rather than -1 matters: closing at once while the peer is
 * still sending makes the kernel answer with RST, which destroys our close
 * frame before the peer reads it. */
int rn__conn_fail(rn_conn *c, int code, const char *reason) {
  int rlen = (int)strlen(reason);
  if (c->state >= RN_CS_CLOSING)
    return 0;
  c->state = RN_CS_CLOSING;
  c->close_code = code;
  rn__set_reason(&c->close_reason, &c->close_reason_len, reason, (size_t)rlen);
  rn__sendq_clear(c);
  c->rx_active = 0;
  rn__conn_rx_free(c); /* a closing connection reads nothing more */
  if (!lws_partial_buffered(c->wsi))
    rn__close_frame(c, code, reason, rlen);
  else {
    lws_callback_on_writable(c->wsi);
    rn__conn_set_timeout(c, 2);
  }
  return 0;
}

/* Records the code and reason of the peer's close frame (in: 2-byte code +
 * reason, or empty: 1005). The caller has validated it. */
void rn__conn_peer_close(rn_conn *c, const void *in, size_t len) {
  const unsigned char *p = (const unsigned char *)in;
  if (len >= 2) {
    int code = (p[0] << 8) | p[1];
    c->peer_code = code;
    rn__set_reason(&c->peer_reason, &c->peer_reason_len, p + 2, len - 2);
  } else {
    c->peer_code = 1005;
    rn__set_reason(&c->peer_reason, &c->peer_reason_len, NULL, 0);
  }
}

static int rn__close_code_valid(int code) {
  if (code >= 3000 && code <= 4999)
    return 1;
  if (code < 1000 || code > 1014)
    return 0;
  return code != 1004 && code != 1005 && code != 1006;
}

/* Validates a received close frame; returns the code to answer with when it
 * breaks the RFC (1002 or 1007), 0 when it is fine. */
int rn__conn_check_close(const void *in, size_t len) {
  const unsigned char *p = (const unsigned char *)in;
  if (len == 0)
    return 0;
  if (len == 1)
    return 1002;
  if (!rn__close_code_valid((p[0] << 8) | p[1]))
    return 1002;
  if (len > 2 && rn__utf8_check(p + 2, len - 2) != 0)
    return 1007;
  return 0;
}

/* Answers a bad close frame with our own close frame carrying `code`. */
static void rn__conn_answer_close(rn_conn *c, int code) {
  c->peer_code = 1006;
  rn__set_reason(&c->peer_reason, &c->peer_reason_len, NULL, 0);
  rn__conn_fail(c, code, code == 1007 ? "invalid UTF-8 in close reason" : "invalid close frame");
  /* the caller returns -1: the peer is closing anyway */
}

/* LWS_CALLBACK_WS_PEER_INITIATED_CLOSE, server and client alike: records
 * the peer's code and reason, or answers a malformed close frame with 1002
 * (1007 for a reason that is not UTF-8). Returns what the callback returns:
 * -1 when the connection is to be dropped now (the reply to our own close,
 * or a bad frame), 0 to let lws answer the close. */
int rn__conn_on_peer_close(rn_conn *c, const void *in, size_t len) {
  int bad;
  if (c->close_sent)
    return -1; /* the reply to our close: done */
  bad = rn__conn_check_close(in, len);
  if (bad) {
    rn__conn_answer_close(c, bad);
    return -1;
  }
  rn__conn_peer_close(c, in, len);
  /* Nothing after the peer's close frame is data (RFC 6455 5.5.1): a
   * message it left unfinished is dropped, and so is anything that still
   * arrives. lws answers the close frame itself (close_sent: we send no
   * other), so nothing may follow it: queued messages are dropped (their
   * waiters told) and sends fail with ECLOSED from now on. */
  if (c->state == RN_CS_OPEN)
    c->state = RN_CS_CLOSING;
  c->close_sent = 1;
  /* What is queued answers data that came before the close frame: it goes
   * out now, ahead of lws's close reply (which lws writes from its own
   * WRITEABLE handling), as far as lws takes it without a partial write
   * (rn__sendq_flush); the rest is dropped. A message may be queued only
   * because tx_defer held it back for a pong: lws's close reply replaces
   * that pong (both use its one control-frame buffer). */
  if (c->qhead && c->wsi)
    (void)rn__sendq_flush(c, c->wsi);
  rn__sendq_clear(c);
  c->rx_active = 0;
  rn__conn_rx_free(c);
  return 0;
}

/* Whether the peer of a connection lws is closing is still there and
 * talking: its socket has neither ended nor failed, and its kernel received
 * data in the last second. */
static int rn__peer_talking(struct lws *wsi) {
  int fd = (int)lws_get_socket_fd(wsi);
  unsigned char b;
  ssize_t n;
  struct tcp_info ti;
  socklen_t tl = sizeof ti;
  if (fd < 0)
    return 0;
  n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
    return 0; /* the peer ended the connection, or it failed */
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) != 0)
    return 0;
  return ti.tcpi_last_data_recv < 1000;
}

/* LWS_CALLBACK_WS_SERVER_DROP_PROTOCOL: lws is closing an open connection
 * by itself, before it decides whether to send a close frame (lws 4.1.6,
 * __lws_close_free_wsi: the unbind callback comes just before
 * close_via_role_protocol, which sends a close frame when a close reason
 * is set, lws_get_close_length() > 0).
 *  - lws set a reason (an RFC 6455 violation it detected: bad opcode, RSV
 *    bits, fragmented control frame, bad continuation): it sends that close
 *    frame; the connection reports that code rather than 1006.
 *  - lws set none: its frame parser gave up without one (a 64-bit length
 *    with the top bit set, a control frame announcing more than 125 bytes:
 *    lws_ws_rx_sm returns -1 without lws_close_reason), the peer ended the
 *    connection, or the keepalive hang-up fired. A parser failure is the
 *    only one of these with a live peer that has just sent data: it gets
 *    close 1002 (lws_close_reason, so lws sends the frame and waits for the
 *    reply). The others close as before, without a close frame. */
void rn__conn_lws_closing(rn_conn *c, struct lws *wsi) {
  int n;
  if (c->wsi != wsi || c->state != RN_CS_OPEN || c->close_sent)
    return;
  n = lws_get_close_length(wsi);
  if (n == 0) {
    if (!rn__peer_talking(wsi))
      return;
    lws_close_reason(wsi, LWS_CLOSE_STATUS_PROTOCOL_ERR, (unsigned char *)"invalid frame header", 20);
    c->close_code = 1002;
  } else if (n >= 2) {
    const unsigned char *p = lws_get_close_payload(wsi);
    c->close_code = (p[0] << 8) | p[1];
  } else {
    return;
  }
  c->state = RN_CS_CLOSING;
  c->close_sent = 1;
  rn__sendq_clear(c);
  c->rx_active = 0;
  rn__conn_rx_free(c);
}

/* Writes the close frame of a closing connection whose queue has drained. */
void rn__conn_send_close_frame(rn_conn *c) {
  rn__close_frame(c, c->close_code, c->close_reason, c->close_reason_len);
}

/* Makes room in a full budget: closes at once, with 1008 "slow consumer",
 * the server connection with the largest queue above send_high_water (one
 * the slow_timeout sweep would close anyway), which frees its queue. At most
 * one scan per loop turn, so refused sends cannot make the loop quadratic.
 * Returns 1 when it closed one. */
int rn__evict(rn_server *s) {
  rn_conn *c, *worst = NULL;
  uint64_t now = uv_now(&s->L->loop);
  if (s->evict_scan_at == now)
    return 0;
  s->evict_scan_at = now;
  for (c = s->L->conns; c; c = c->next)
    if (c->srv == s && c->wsi && c->state == RN_CS_OPEN && c->qbytes > s->lim.send_high_water &&
        (!worst || c->qbytes > worst->qbytes))
      worst = c;
  if (!worst)
    return 0;
  s->counters.buffer_evictions++;
  s->L->counters.buffer_evictions++;
  rn__conn_start_close(worst, 1008, "slow consumer", 13, 0);
  return 1;
}

void rn__conn_sweep(rn_loop *l) {
  rn_conn *c;
  uint64_t now = uv_now(&l->loop);
  for (c = l->conns; c; c = c->next) {
    const rn_limits *lim = rn__conn_limits(c);
    rn__txpart_sync(c);
    /* A peer that reads nothing is read again after two or three sweeps. */
    if (c->rx_held && ++c->rx_held > 3)
      rn__rx_release(c, 1);
    if (c->wsi && c->over_since && c->state == RN_CS_OPEN &&
        (double)(now - c->over_since) >= lim->slow_timeout * 1000.0) {
      if (c->srv)
        c->srv->counters.ws_slow_closes++;
      l->counters.ws_slow_closes++;
      rn__conn_start_close(c, 1008, "slow consumer", 13, 0);
    }
  }
}
