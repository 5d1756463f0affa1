/*
 * relaynet core: a connection's send queue.
 *
 * Send contract: when nothing is queued, lws holds no partial write and no
 * pong lws may hold must go first (rn__conn_direct, rn_conn.tx_defer), a
 * message is written at once (on libuv this avoids a uv_poll_start per
 * message); otherwise it is queued and written from the WRITEABLE callback
 * (rn__sendq_flush), which lws calls only after its own pending control
 * frames. A queued message is a refcounted rn_msg, so a broadcast
 * shares one buffer among every server connection's queue.
 *
 * Every byte queued, and every write lws holds in part, is charged to the
 * server's max_buffered budget while it is held (rn_server.buffered), and
 * while lws holds part of a write a server connection is not read from
 * (rn__rx_hold), so that a peer's close frame is not parsed then.
 */
#include "rn.h"

#include <stdlib.h>
#include <string.h>

void rn__msg_unref(rn_msg *m) {
  if (--m->refcnt == 0)
    free(m);
}

rn_msg *rn__msg_new(const void *data, size_t len, int binary) {
  rn_msg *m = (rn_msg *)malloc(sizeof *m + LWS_PRE + len);
  if (!m)
    return NULL;
  m->refcnt = 1;
  m->binary = binary;
  m->len = len;
  if (len)
    memcpy(m->buf + LWS_PRE, data, len);
  return m;
}

/* Tells the waiter of a queued message (its ticket) whether it was written. */
static void rn__written(rn_conn *c, uint64_t ticket, int ok) {
  rn_event ev;
  memset(&ev, 0, sizeof ev);
  ev.type = RN_EV_WRITTEN;
  ev.conn = c;
  ev.ticket = ticket;
  ev.flag = ok;
  rn__event_push(c->L, &ev);
}

/* Drops every queued message; a waiter (ticket) is told it was not written. */
void rn__sendq_clear(rn_conn *c) {
  rn_qnode *n = c->qhead, *next;
  for (; n; n = next) {
    next = n->next;
    if (n->ticket)
      rn__written(c, n->ticket, 0); /* not written */
    rn__msg_unref(n->msg);
    free(n);
  }
  c->qhead = c->qtail = NULL;
  if (c->srv)
    rn__buffered_sub(c->srv, c->qbytes);
  c->qbytes = 0;
  c->over_since = 0;
}

/* Sets the bytes charged to the budget for a write lws holds in part. */
void rn__txpart_set(rn_conn *c, size_t n) {
  if (!c->srv || n == c->txpart)
    return;
  if (n > c->txpart)
    rn__buffered_add(c->srv, n - c->txpart);
  else
    rn__buffered_sub(c->srv, c->txpart - n);
  c->txpart = n;
}

/* The rx flow control reason bit relaynet uses while lws holds part of a
 * write (lws_rx_flow_control's bitmap form: other reasons, such as
 * conn:pause and the rate limits' LWS_RXFLOW_REASON_USER_BOOL, stay as they
 * are). */
#define RN_RXFLOW_TX (1 << 1)

/* Called when lws has kept part of a data frame on a server connection:
 * when nothing else is queued behind it (the peer has been sent all there
 * is, as when it is about to close), reading stops until lws has written
 * it. lws 4.1.6 answers a peer's close frame that it parses while it holds
 * a partial write by closing the socket without a close reply (ops-ws.c:
 * "Closing on peer close due to pending tx"), so the close must wait in the
 * socket until the write is done. A stream with more queued is not held, so
 * a slow reader's own messages are still read; a peer that reads nothing is
 * read again after two or three seconds (rn__rx_release from the sweep), so
 * that holding cannot deadlock a client that writes everything before it
 * reads. Client connections never hold: two relaynet nodes would wait for
 * each other. */
static void rn__rx_hold(rn_conn *c) {
  if (!c->srv || c->rx_held || c->qhead)
    return;
  c->rx_held = 1;
  lws_rx_flow_control(c->wsi, LWS_RXFLOW_REASON_APPLIES_DISABLE | RN_RXFLOW_TX);
  lws_callback_on_writable(c->wsi); /* to learn when the write is done */
}

/* Reads again once lws holds no partial write, or at once when `force`. */
void rn__rx_release(rn_conn *c, int force) {
  if (!c->rx_held || !c->wsi || (!force && lws_partial_buffered(c->wsi)))
    return;
  c->rx_held = 0;
  lws_rx_flow_control(c->wsi, LWS_RXFLOW_REASON_APPLIES_ENABLE | RN_RXFLOW_TX);
}

/* After lws_write of a `len`-byte message, called only when lws held
 * nothing before it: counts the message out; a partial write lws holds now
 * is this message's, charged to the budget, and holds reading. */
static void rn__after_write(rn_conn *c, size_t len) {
  rn__traffic_out(c, len);
  if (lws_partial_buffered(c->wsi)) {
    rn__txpart_set(c, len);
    rn__rx_hold(c);
  } else {
    rn__txpart_set(c, 0);
  }
}

/* Releases that charge once lws has written the rest (or the wsi is gone). */
void rn__txpart_sync(rn_conn *c) {
  if (c->txpart && (!c->wsi || !lws_partial_buffered(c->wsi)))
    rn__txpart_set(c, 0);
}

static int rn__write_msg(rn_conn *c, rn_msg *m) {
  unsigned char *p = m->buf + LWS_PRE;
  if (c->client && m->refcnt > 1) {
    /* Client frames are masked in place: never write a shared buffer. */
    p = rn__scratch(c->L, m->len);
    if (!p)
      return -1;
    memcpy(p, m->buf + LWS_PRE, m->len);
  }
  if (lws_write(c->wsi, p, m->len, m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT) < 0)
    return -1;
  rn__after_write(c, m->len);
  return 0;
}

static void rn__after_dequeue(rn_conn *c) {
  const rn_limits *lim = rn__conn_limits(c);
  if (c->qbytes <= lim->send_high_water) {
    c->over_since = 0;
    if (c->want_drain) {
      rn_event ev;
      memset(&ev, 0, sizeof ev);
      ev.type = RN_EV_DRAIN;
      ev.conn = c;
      c->want_drain = 0;
      rn__event_push(c->L, &ev);
    }
  }
}

/* Writes queued messages from the WRITEABLE callback, at most 16 per call
 * and only while lws holds no partial write, emitting RN_EV_WRITTEN for each
 * one a waiter asked about and RN_EV_DRAIN when the queue falls to its high
 * water mark. Returns 0, or -1 when a write failed (the caller closes). */
int rn__sendq_flush(rn_conn *c, struct lws *wsi) {
  int budget = 16;
  while (c->qhead && budget-- > 0 && !lws_partial_buffered(wsi)) {
    rn_qnode *n = c->qhead;
    int rc;
    c->qhead = n->next;
    if (!c->qhead)
      c->qtail = NULL;
    c->qbytes -= n->msg->len;
    if (c->srv)
      rn__buffered_sub(c->srv, n->msg->len);
    rc = rn__write_msg(c, n->msg);
    if (n->ticket)
      rn__written(c, n->ticket, rc == 0);
    rn__msg_unref(n->msg);
    free(n);
    if (rc < 0)
      return -1;
  }
  rn__after_dequeue(c);
  return 0;
}

/* Writes one message at once from the loop's scratch buffer (the caller
 * checked rn__conn_direct: nothing queued, no partial write, no pong to let
 * go first); lws keeps any unsent tail, which is charged to the budget.
 * Returns 0, -1 when the write failed, or -2 when no scratch memory could
 * be had. */
int rn__sendq_write_now(rn_conn *c, const void *data, size_t len, int binary) {
  unsigned char *p = rn__scratch(c->L, len);
  if (!p)
    return -2;
  memcpy(p, data, len);
  if (lws_write(c->wsi, p, len, binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT) < 0)
    return -1;
  rn__after_write(c, len);
  return 0;
}

/* Queues (or writes at once) one message; returns 0, or -1 on allocation or
 * write failure. *queued is set when the message waits in the queue. */
int rn__sendq_push(rn_conn *c, rn_msg *m, uint64_t ticket, int *queued) {
  rn_qnode *n;
  const rn_limits *lim = rn__conn_limits(c);
  *queued = 0;
  if (rn__conn_direct(c))
    return rn__write_msg(c, m);
  n = (rn_qnode *)malloc(sizeof *n);
  if (!n)
    return -1;
  n->next = NULL;
  n->msg = m;
  m->refcnt++;
  n->ticket = ticket;
  if (c->qtail)
    c->qtail->next = n;
  else
    c->qhead = n;
  c->qtail = n;
  c->qbytes += m->len;
  if (c->srv)
    rn__buffered_add(c->srv, m->len);
  if (c->qbytes > lim->send_high_water && !c->over_since)
    c->over_since = uv_now(&c->L->loop) ? uv_now(&c->L->loop) : 1;
  *queued = 1;
  lws_callback_on_writable(c->wsi);
  return 0;
}
