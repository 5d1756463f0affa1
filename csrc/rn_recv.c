/*
 * relaynet core: receiving WebSocket messages.
 *
 * lws has parsed and unmasked the frames and answered control frames; what
 * arrives here is data, a fragment at a time. A server connection is
 * charged against its token buckets (ws_msg_rate, ws_byte_rate); fragments
 * are reassembled up to max_message in a buffer charged to max_buffered (a
 * frame whose announced length cannot fit is refused at its first piece);
 * text is checked as UTF-8 as it arrives (only the new bytes each time);
 * a whole message becomes one RN_EV_MESSAGE, its payload copied into the
 * event arena when it arrived in one piece. Any violation fails the
 * connection with its close code (rn__conn_fail). After a message that came
 * in more than one frame the connection sends nothing at once until its
 * next WRITEABLE callback (tx_defer): a ping between the fragments is
 * answered by lws from its own WRITEABLE handling, which must go first.
 */
#include "rn.h"

#include <stdlib.h>
#include <string.h>

/* Refills the receive token buckets of a server connection and charges
 * `bytes` (and one message when `msg`). Returns 1 (messages) or 2 (bytes)
 * when that bucket would go negative: the peer sends faster than
 * ws_msg_rate / ws_byte_rate allow beyond their bursts, 0 otherwise. A rate
 * of 0 switches its bucket off. */
static int rn__rate_exceeded(rn_conn *c, const rn_limits *lim, size_t bytes, int msg) {
  uint64_t now;
  double scale = c->rate_scale ? (double)c->rate_scale : 1.0;
  if (!lim->ws_msg_rate && !lim->ws_byte_rate)
    return 0;
  now = uv_now(&c->L->loop);
  if (!c->rl_at) {
    c->rl_msgs = scale * (double)lim->ws_msg_burst;
    c->rl_bytes = scale * (double)lim->ws_byte_burst;
  } else if (now > c->rl_at) {
    double dt = (double)(now - c->rl_at) / 1000.0;
    c->rl_msgs += dt * scale * (double)lim->ws_msg_rate;
    if (c->rl_msgs > scale * (double)lim->ws_msg_burst)
      c->rl_msgs = scale * (double)lim->ws_msg_burst;
    c->rl_bytes += dt * scale * (double)lim->ws_byte_rate;
    if (c->rl_bytes > scale * (double)lim->ws_byte_burst)
      c->rl_bytes = scale * (double)lim->ws_byte_burst;
  }
  c->rl_at = now ? now : 1;
  if (msg && lim->ws_msg_rate) {
    if (c->rl_msgs < 1.0)
      return 1;
    c->rl_msgs -= 1.0;
  }
  if (lim->ws_byte_rate) {
    if (c->rl_bytes < (double)bytes)
      return 2;
    c->rl_bytes -= (double)bytes;
  }
  return 0;
}

int rn__conn_receive(rn_conn *c, struct lws *wsi, const void *in, size_t len) {
  const rn_limits *lim = rn__conn_limits(c);
  int final = lws_is_final_fragment(wsi);
  /* What the current frame still announces beyond this piece (lws has read
   * its header): a frame that cannot fit max_message is refused at its
   * first piece rather than after max_message bytes of it. */
  size_t remaining = lws_remaining_packet_payload(wsi);
  rn_event ev;

  if (c->state != RN_CS_OPEN)
    return 0; /* closing: drop what the peer still sends */
  if (c->srv) {
    int over = rn__rate_exceeded(c, lim, len, !c->rx_active);
    if (over) {
      c->srv->counters.ws_rate_closes++;
      c->L->counters.ws_rate_closes++;
      rn__conn_fail(c, 1008, over == 1 ? "message rate limit exceeded" : "byte rate limit exceeded");
      /* A flooding peer gets no more of our reading: discarding what it
       * keeps sending would cost CPU for nothing, and with its writes
       * blocked its own reader sees the close frame. The close deadline
       * then ends the connection. */
      lws_rx_flow_control(wsi, 0);
      return 0;
    }
  }
  if (!c->rx_active) {
    c->rx_active = 1;
    c->rx_split = 0;
    c->rx_binary = lws_frame_is_binary(wsi);
    c->rxlen = 0;
    c->rx_valid = 0;
  }
  if (c->rxlen + len > lim->max_message || remaining > lim->max_message - (c->rxlen + len)) {
    if (c->srv)
      c->srv->counters.ws_too_big++;
    c->L->counters.ws_too_big++;
    return rn__conn_fail(c, 1009, "message too big");
  }

  memset(&ev, 0, sizeof ev);
  ev.type = RN_EV_MESSAGE;
  ev.conn = c;
  ev.flag = c->rx_binary;
  if (final && c->rxlen == 0) {
    /* The whole message arrived in one piece: no reassembly buffer. */
    if (!c->rx_binary && rn__utf8_check((const unsigned char *)in, len) != 0)
      return rn__conn_fail(c, 1007, "invalid UTF-8");
    if (rn__arena_put(c->L, in, len, &ev.off) == 0) {
      ev.in_arena = 1;
    } else {
      ev.data = (char *)malloc(len ? len : 1);
      if (!ev.data)
        return rn__conn_fail(c, 1011, "out of memory");
      memcpy(ev.data, in, len);
    }
    ev.len = len;
  } else {
    size_t oldcap = c->rxcap;
    size_t ncap = rn__grow_cap(oldcap, c->rxlen + len, 1024, lim->max_message);
    if (c->srv && ncap > oldcap && !rn__buffered_fits(c->srv, ncap - oldcap) &&
        !(rn__evict(c->srv) && c->state == RN_CS_OPEN && rn__buffered_fits(c->srv, ncap - oldcap))) {
      c->srv->counters.buffer_rx_closes++;
      c->L->counters.buffer_rx_closes++;
      return rn__conn_fail(c, 1008, "server receive buffers full");
    }
    if (rn__grow(&c->rx, &c->rxcap, c->rxlen + len, 1024, lim->max_message) < 0)
      return rn__conn_fail(c, 1011, "out of memory");
    if (c->srv)
      rn__buffered_add(c->srv, c->rxcap - oldcap);
    if (len) /* an empty fragment may come before any buffer exists */
      memcpy(c->rx + c->rxlen, in, len);
    c->rxlen += len;
    if (!c->rx_binary && c->rxlen > c->rx_valid) {
      /* Validate only what is new (plus an incomplete sequence carried
       * over), so tiny fragments cannot make validation quadratic. */
      int tail = rn__utf8_check(c->rx + c->rx_valid, c->rxlen - c->rx_valid);
      if (tail < 0 || (final && tail > 0))
        return rn__conn_fail(c, 1007, "invalid UTF-8");
      c->rx_valid = c->rxlen - (size_t)tail;
    }
    if (!final) {
      if (!remaining)
        c->rx_split = 1; /* a frame ended: the next one may follow a ping */
      return 0;
    }
    /* Hand the reassembly buffer to the event; the next message starts a
     * new one, so an idle connection keeps no receive buffer (and the
     * buffer leaves the budget: it is the event's now). */
    if (c->srv)
      rn__buffered_sub(c->srv, c->rxcap);
    ev.data = (char *)c->rx;
    ev.len = c->rxlen;
    c->rx = NULL;
    c->rxcap = 0;
  }
  if (c->rx_split) {
    /* lws answers a ping between the fragments from its own WRITEABLE
     * handling, before our WRITEABLE callback; a reply written at once
     * would overtake that pong. Until that callback, send through it. */
    c->rx_split = 0;
    c->tx_defer = 1;
  }
  c->rx_active = 0;
  c->rxlen = 0;
  rn__traffic_in(c, ev.len);
  rn__event_push(c->L, &ev);
  return 0;
}
