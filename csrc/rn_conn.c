/*
 * relaynet core: WebSocket connections, server and client side alike.
 *
 * Memory contract: an rn_conn is reference counted. lws holds one reference
 * from establishment (or connect) until LWS_CALLBACK_CLOSED / CLIENT_CLOSED,
 * the Lua box holds one until it is collected, and every queued event holds
 * one. conn->wsi is valid only while the lws reference is held; every path
 * that writes checks it first.
 *
 * Send contract: when nothing is queued and lws holds no partial write, a
 * message is written at once (on libuv this avoids a uv_poll_start per
 * message); otherwise it is queued and written from the WRITEABLE callback.
 */
#include "rn.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The built-in defaults. The RELAYNET_LIMITS environment variable
 * ("name=value,name=value") overrides them for every server and client of
 * the process (see rn__limits_base); Lua options override both. */
static const rn_limits rn__default_limits = {
  1 << 20,       /* max_message */
  1 << 20,       /* max_body */
  4 << 20,       /* send_queue */
  1 << 20,       /* send_high_water */
  30.0,          /* slow_timeout */
  10000,         /* max_connections */
  30,            /* ping_interval */
  60,            /* pong_timeout */
  1024,          /* rx_buffer */
  30.0,          /* body_timeout */
  1024,          /* body_min_rate */
  256,           /* max_connections_per_ip */
  1000,          /* ws_msg_rate */
  2000,          /* ws_msg_burst */
  4 << 20,       /* ws_byte_rate */
  8 << 20,       /* ws_byte_burst */
  64 << 20       /* max_buffered */
};

const rn_limits *rn__conn_limits(const rn_conn *c) {
  if (c->srv)
    return &c->srv->lim;
  return &c->cl->lim;
}

rn_conn *rn__conn_new(rn_loop *l, rn_server *srv, int client) {
  rn_conn *c = (rn_conn *)calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->L = l;
  c->srv = srv;
  c->client = client;
  c->id = l->next_conn_id++;
  c->refcnt = 1; /* the lws side */
  c->state = RN_CS_CONNECTING;
  c->peer_code = 1006;
  if (client) {
    c->cl = (rn_client_opts *)calloc(1, sizeof *c->cl);
    if (!c->cl) {
      free(c);
      return NULL;
    }
    c->cl->lim = rn__default_limits;
  }
  if (srv)
    srv->refcnt++;
  c->next = l->conns;
  if (l->conns)
    l->conns->prev = c;
  l->conns = c;
  return c;
}

static void rn__msg_unref(rn_msg *m) {
  if (--m->refcnt == 0)
    free(m);
}

static rn_msg *rn__msg_new(const void *data, size_t len, int binary) {
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

static void rn__queue_clear(rn_conn *c) {
  rn_qnode *n = c->qhead, *next;
  for (; n; n = next) {
    next = n->next;
    if (n->ticket) {
      rn_event ev;
      memset(&ev, 0, sizeof ev);
      ev.type = RN_EV_WRITTEN;
      ev.conn = c;
      ev.ticket = n->ticket;
      ev.flag = 0; /* not written */
      rn__event_push(c->L, &ev);
    }
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
static void rn__txpart_set(rn_conn *c, size_t n) {
  if (!c->srv || n == c->txpart)
    return;
  if (n > c->txpart)
    rn__buffered_add(c->srv, n - c->txpart);
  else
    rn__buffered_sub(c->srv, c->txpart - n);
  c->txpart = n;
}

/* Releases that charge once lws has written the rest (or the wsi is gone). */
static void rn__txpart_sync(rn_conn *c) {
  if (c->txpart && (!c->wsi || !lws_partial_buffered(c->wsi)))
    rn__txpart_set(c, 0);
}

/* Frees the reassembly buffer and gives its bytes back to the budget. */
static void rn__conn_rx_free(rn_conn *c) {
  if (c->srv)
    rn__buffered_sub(c->srv, c->rxcap);
  free(c->rx);
  c->rx = NULL;
  c->rxcap = c->rxlen = 0;
}

void rn__conn_unref(rn_conn *c) {
  if (--c->refcnt > 0)
    return;
  rn__queue_clear(c);
  if (c->prev)
    c->prev->next = c->next;
  else if (c->L->conns == c)
    c->L->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  rn__conn_rx_free(c);
  rn__txpart_set(c, 0);
  if (c->srv)
    rn__server_unref(c->srv);
  free(c->path);
  free(c->close_reason);
  free(c->peer_reason);
  if (c->cl) {
    free(c->cl->path);
    free(c->cl->host);
    free(c->cl->origin);
    free(c->cl->address);
    free(c->cl->protocol);
    free(c->cl);
  }
  free(c);
}

void rn__conn_established(rn_conn *c, struct lws *wsi) {
  rn_event ev;
  c->wsi = wsi;
  c->state = RN_CS_OPEN;
  c->opened = 1;
  if (c->srv)
    c->srv->nconns++;
  memset(&ev, 0, sizeof ev);
  ev.type = RN_EV_OPEN;
  ev.conn = c;
  rn__event_push(c->L, &ev);
}

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
static void rn__send_close_frame(rn_conn *c, int code, const char *reason, int rlen) {
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
static void rn__conn_start_close(rn_conn *c, int code, const char *reason, int rlen, int graceful) {
  if (!c->wsi || c->state >= RN_CS_CLOSING)
    return;
  c->state = RN_CS_CLOSING;
  c->close_code = code;
  if (rlen > 123)
    rlen = 123;
  rn__set_reason(&c->close_reason, &c->close_reason_len, reason, (size_t)rlen);
  if (!graceful)
    rn__queue_clear(c);
  if (!c->qhead && !lws_partial_buffered(c->wsi))
    rn__send_close_frame(c, code, reason, rlen);
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
static int rn__conn_fail(rn_conn *c, int code, const char *reason) {
  int rlen = (int)strlen(reason);
  if (c->state >= RN_CS_CLOSING)
    return 0;
  c->state = RN_CS_CLOSING;
  c->close_code = code;
  rn__set_reason(&c->close_reason, &c->close_reason_len, reason, (size_t)rlen);
  rn__queue_clear(c);
  c->rx_active = 0;
  rn__conn_rx_free(c); /* a closing connection reads nothing more */
  if (!lws_partial_buffered(c->wsi))
    rn__send_close_frame(c, code, reason, rlen);
  else {
    lws_callback_on_writable(c->wsi);
    rn__conn_set_timeout(c, 2);
  }
  return 0;
}

static int rn__evict(rn_server *s);

/* Strict UTF-8 check (RFC 3629: no overlongs, no surrogates, <= U+10FFFF).
 * Returns the number of bytes of a trailing incomplete sequence (0..3) when
 * the text is valid so far, or -1 when it is invalid. */
int rn__utf8_check(const unsigned char *s, size_t len) {
  size_t i = 0;
  while (i < len) {
    unsigned char c = s[i];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      /* ASCII runs, eight bytes at a time (memcpy: no alignment needed). */
      while (i + 8 <= len) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080ULL)
          break;
        i += 8;
      }
      while (i < len && s[i] < 0x80)
        i++;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return -1;
    }
    if (i + 1 < len && (s[i + 1] < lo || s[i + 1] > hi))
      return -1;
    {
      size_t k;
      for (k = 2; k <= need && i + k < len; k++)
        if ((s[i + k] & 0xC0) != 0x80)
          return -1;
    }
    if (i + need >= len)
      return (int)(len - i);
    i += need + 1;
  }
  return 0;
}

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
    c->rx_binary = lws_frame_is_binary(wsi);
    c->rxlen = 0;
    c->rx_valid = 0;
  }
  if (c->rxlen + len > lim->max_message) {
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
    if (!final)
      return 0;
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
  c->rx_active = 0;
  c->rxlen = 0;
  rn__event_push(c->L, &ev);
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
void rn__conn_answer_close(rn_conn *c, int code) {
  c->peer_code = 1006;
  rn__set_reason(&c->peer_reason, &c->peer_reason_len, NULL, 0);
  rn__conn_fail(c, code, code == 1007 ? "invalid UTF-8 in close reason" : "invalid close frame");
  /* the caller returns -1: the peer is closing anyway */
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
  /* Called only when lws held nothing: a partial now is this message's. */
  rn__txpart_set(c, lws_partial_buffered(c->wsi) ? m->len : 0);
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

int rn__conn_writeable(rn_conn *c, struct lws *wsi) {
  int budget = 16;
  if (!c || c->wsi != wsi)
    return 0;
  rn__txpart_sync(c);
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
    if (n->ticket) {
      rn_event ev;
      memset(&ev, 0, sizeof ev);
      ev.type = RN_EV_WRITTEN;
      ev.conn = c;
      ev.ticket = n->ticket;
      ev.flag = rc == 0;
      rn__event_push(c->L, &ev);
    }
    rn__msg_unref(n->msg);
    free(n);
    if (rc < 0)
      return -1;
  }
  rn__after_dequeue(c);
  if (c->qhead || lws_partial_buffered(wsi)) {
    lws_callback_on_writable(wsi);
    return 0;
  }
  if (c->state == RN_CS_CLOSING && !c->close_sent)
    rn__send_close_frame(c, c->close_code, c->close_reason, c->close_reason_len);
  return 0;
}

void rn__conn_closed(rn_conn *c) {
  rn_event ev;
  if (c->state == RN_CS_CLOSED)
    return;
  c->wsi = NULL;
  c->state = RN_CS_CLOSED;
  rn__queue_clear(c);
  rn__conn_rx_free(c);
  rn__txpart_set(c, 0);
  if (c->opened) {
    if (c->srv)
      c->srv->nconns--;
    memset(&ev, 0, sizeof ev);
    ev.type = RN_EV_CLOSE;
    ev.conn = c;
    /* The code reported is the peer's when it sent one, else ours when we
     * closed first, else 1006 (abnormal closure). */
    if (c->peer_code != 1006 || !c->close_sent) {
      ev.code = c->peer_code;
      if (c->peer_reason_len > 0) {
        ev.data = (char *)malloc((size_t)c->peer_reason_len);
        if (ev.data) {
          memcpy(ev.data, c->peer_reason, (size_t)c->peer_reason_len);
          ev.len = (size_t)c->peer_reason_len;
        }
      }
    } else {
      ev.code = c->close_code;
      if (c->close_reason_len > 0) {
        ev.data = (char *)malloc((size_t)c->close_reason_len);
        if (ev.data) {
          memcpy(ev.data, c->close_reason, (size_t)c->close_reason_len);
          ev.len = (size_t)c->close_reason_len;
        }
      }
    }
    rn__event_push(c->L, &ev);
  }
  rn__conn_unref(c); /* the lws side */
}

void rn__conn_sweep(rn_loop *l) {
  rn_conn *c;
  uint64_t now = uv_now(&l->loop);
  for (c = l->conns; c; c = c->next) {
    const rn_limits *lim = rn__conn_limits(c);
    rn__txpart_sync(c);
    if (c->wsi && c->over_since && c->state == RN_CS_OPEN &&
        (double)(now - c->over_since) >= lim->slow_timeout * 1000.0) {
      if (c->srv)
        c->srv->counters.ws_slow_closes++;
      l->counters.ws_slow_closes++;
      rn__conn_start_close(c, 1008, "slow consumer", 13, 0);
    }
  }
}

/* Queues (or writes at once) one message; returns 0, or -1 on allocation or
 * write failure. *queued is set when the message waits in the queue. */
static int rn__conn_enqueue(rn_conn *c, rn_msg *m, uint64_t ticket, int *queued) {
  rn_qnode *n;
  const rn_limits *lim = rn__conn_limits(c);
  *queued = 0;
  if (!c->qhead && !lws_partial_buffered(c->wsi))
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

/* Makes room in a full budget: closes at once, with 1008 "slow consumer",
 * the server connection with the largest queue above send_high_water (one
 * the slow_timeout sweep would close anyway), which frees its queue. At most
 * one scan per loop turn, so refused sends cannot make the loop quadratic.
 * Returns 1 when it closed one. */
static int rn__evict(rn_server *s) {
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

/* Whether a message of `len` bytes may go to c now. One that must be queued
 * is refused past the connection's send_queue; any message is refused past
 * its server's max_buffered (after trying an eviction), except one written
 * at once (nothing queued, no partial write held by lws) of at most
 * RN_BUDGET_DIRECT_MAX bytes. Returns NULL, or the name of the limit that
 * refuses it. Used by every send path (send, send_async, broadcast). */
static const char *rn__send_refused(rn_conn *c, size_t len) {
  const rn_limits *lim = rn__conn_limits(c);
  int direct;
  rn__txpart_sync(c);
  direct = !c->qhead && !lws_partial_buffered(c->wsi);
  if (!direct && c->qbytes + len > lim->send_queue)
    return "send_queue";
  if (!c->srv || (direct && len <= RN_BUDGET_DIRECT_MAX) || rn__buffered_fits(c->srv, len))
    return NULL;
  if (rn__evict(c->srv) && c->state == RN_CS_OPEN && rn__buffered_fits(c->srv, len))
    return NULL;
  c->srv->counters.buffer_send_refusals++;
  c->L->counters.buffer_send_refusals++;
  return "max_buffered";
}

/* ---- Lua side ------------------------------------------------------------ */

/* Every function in the connection metatable (and core.conn_send) has that
 * metatable as its first upvalue, so checking the type of its first argument
 * is a pointer comparison rather than a registry look-up by name. A function
 * without upvalues (core.broadcast) gets 0 from lua_rawequal on the missing
 * upvalue and takes the luaL_checkudata path. */
static rn_conn **rn__conn_box(lua_State *L, int idx) {
  void *p = lua_touserdata(L, idx);
  if (p && lua_getmetatable(L, idx)) {
    int same = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (same)
      return (rn_conn **)p;
  }
  return (rn_conn **)luaL_checkudata(L, idx, RN_CONN_MT);
}

static rn_conn *rn__conn_check(lua_State *L, int idx) {
  rn_conn **b = rn__conn_box(L, idx);
  if (!*b)
    luaL_argerror(L, idx, "connection object is released");
  return *b;
}

void rn__conn_push(lua_State *L, rn_conn *c) {
  rn_conn **b = (rn_conn **)lua_newuserdatauv(L, sizeof *b, 0);
  *b = c;
  c->refcnt++;
  luaL_setmetatable(L, RN_CONN_MT);
}

/* conn:send(data [, binary [, notify]]) -> true | ticket | nil, msg, code,
 * or false when data is neither a string nor a number (the Lua caller raises
 * the misuse error with its own function name).
 * With notify, a message that had to be queued returns a ticket number and
 * an RN_EV_WRITTEN event follows once it is written (or dropped). */
static int rn_conn_send(lua_State *L) {
  rn_conn *c = rn__conn_check(L, 1);
  size_t len;
  const char *data = lua_tolstring(L, 2, &len);
  int binary = lua_toboolean(L, 3);
  int notify = lua_toboolean(L, 4);
  const rn_limits *lim = rn__conn_limits(c);
  uint64_t ticket = 0;
  int queued = 0;
  const char *refused;

  if (!data) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (!c->wsi || c->state != RN_CS_OPEN)
    return rn__fail(L, "ECLOSED", "connection c%I is closed", (lua_Integer)c->id);
  if ((refused = rn__send_refused(c, len)) != NULL) {
    if (refused[0] == 'm')
      return rn__fail(L, "EQUEUEFULL", "server send buffers are full: max_buffered (%I bytes held, limit %I); "
                      "connection c%I not queued", (lua_Integer)c->srv->buffered,
                      (lua_Integer)c->srv->lim.max_buffered, (lua_Integer)c->id);
    return rn__fail(L, "EQUEUEFULL", "send queue of connection c%I is full (%I bytes queued, limit %I)",
                    (lua_Integer)c->id, (lua_Integer)c->qbytes, (lua_Integer)lim->send_queue);
  }
  if (!c->qhead && !lws_partial_buffered(c->wsi)) {
    /* Fast path: write at once from a scratch buffer; lws keeps any tail. */
    unsigned char *p = rn__scratch(c->L, len);
    if (!p)
      return luaL_error(L, "out of memory");
    memcpy(p, data, len);
    if (lws_write(c->wsi, p, len, binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT) < 0) {
      /* Outside a callback lws does not close a failed wsi by itself. */
      c->state = RN_CS_CLOSING;
      lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_ACK, LWS_TO_KILL_ASYNC);
      lws_cancel_service(c->L->ctx);
      return rn__fail(L, "ECLOSED", "connection c%I failed while writing", (lua_Integer)c->id);
    }
    rn__txpart_set(c, lws_partial_buffered(c->wsi) ? len : 0);
    lua_pushboolean(L, 1);
    return 1;
  }
  {
    rn_msg *m = rn__msg_new(data, len, binary);
    if (!m)
      return luaL_error(L, "out of memory");
    if (notify)
      ticket = c->L->next_ticket++;
    if (rn__conn_enqueue(c, m, ticket, &queued) < 0) {
      rn__msg_unref(m);
      return rn__fail(L, "ECLOSED", "connection c%I failed while writing", (lua_Integer)c->id);
    }
    rn__msg_unref(m);
  }
  if (queued && ticket)
    lua_pushinteger(L, (lua_Integer)ticket);
  else
    lua_pushboolean(L, 1);
  return 1;
}

/* conn:close([code [, reason]]): starts a graceful close (queued messages are
 * written first). Returns true, or false when already closing/closed. */
static int rn_conn_close(lua_State *L) {
  rn_conn *c = rn__conn_check(L, 1);
  int code = (int)luaL_optinteger(L, 2, 1000);
  size_t rlen = 0;
  const char *reason = luaL_optlstring(L, 3, "", &rlen);
  /* 1012-1014 are registered codes, but lws 4.1.6 turns them into 1002 on
   * receipt, so a relaynet peer would see a protocol error: not offered. */
  if (!(code == 1000 || code == 1001 || code == 1008 || code == 1011 ||
        (code >= 3000 && code <= 4999)))
    return luaL_argerror(L, 2, "close code must be 1000, 1001, 1008, 1011 or 3000-4999");
  if (rlen > 123)
    return luaL_argerror(L, 3, "close reason longer than 123 bytes");
  if (!c->wsi || c->state >= RN_CS_CLOSING) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (c->state == RN_CS_CONNECTING) {
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_ACK, LWS_TO_KILL_ASYNC);
    lws_cancel_service(c->L->ctx);
    c->state = RN_CS_CLOSING;
    lua_pushboolean(L, 1);
    return 1;
  }
  rn__conn_start_close(c, code, reason, (int)rlen, 1);
  lua_pushboolean(L, 1);
  return 1;
}

static int rn_conn_info(lua_State *L) {
  rn_conn *c = rn__conn_check(L, 1);
  static const char *states[] = {"connecting", "open", "closing", "closed"};
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, (lua_Integer)c->id);
  lua_setfield(L, -2, "id");
  lua_pushstring(L, states[c->state]);
  lua_setfield(L, -2, "state");
  lua_pushinteger(L, (lua_Integer)c->qbytes);
  lua_setfield(L, -2, "queued");
  lua_pushstring(L, c->peer);
  lua_setfield(L, -2, "peer");
  lua_pushstring(L, c->path ? c->path : "/");
  lua_setfield(L, -2, "path");
  lua_pushboolean(L, c->client);
  lua_setfield(L, -2, "client");
  lua_pushinteger(L, c->srv ? c->srv->port : c->cl->port);
  lua_setfield(L, -2, "port");
  return 1;
}

/* conn:set_internal(): marks a mesh/RPC link, which broadcasts skip. */
static int rn_conn_set_internal(lua_State *L) {
  rn_conn *c = rn__conn_check(L, 1);
  c->internal = lua_toboolean(L, 2);
  return 0;
}

/* conn:set_rate_scale(n): this connection may receive n times its server's
 * ws_msg_rate/ws_byte_rate and bursts (1..255; a mesh link carries the
 * traffic of many callers). Rates of 0 stay off. */
static int rn_conn_set_rate_scale(lua_State *L) {
  rn_conn *c = rn__conn_check(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 1 && n <= 255, 2, "must be 1..255");
  c->rate_scale = (uint8_t)n;
  return 0;
}

/* conn:pause(true|false): stops or resumes reading from the socket (TCP
 * back-pressure for a receiver that cannot keep up). */
static int rn_conn_pause(lua_State *L) {
  rn_conn *c = rn__conn_check(L, 1);
  int pause = lua_toboolean(L, 2);
  if (c->wsi)
    lws_rx_flow_control(c->wsi, pause ? 0 : 1);
  return 0;
}

static int rn_conn_queued(lua_State *L) {
  rn_conn *c = rn__conn_check(L, 1);
  lua_pushinteger(L, (lua_Integer)c->qbytes);
  lua_pushboolean(L, c->qbytes > rn__conn_limits(c)->send_high_water);
  return 2;
}

/* conn:want_drain(): asks for an RN_EV_DRAIN event once the queue is at or
 * below the high-water mark. Returns false when it already is. */
static int rn_conn_want_drain(lua_State *L) {
  rn_conn *c = rn__conn_check(L, 1);
  if (!c->wsi || c->qbytes <= rn__conn_limits(c)->send_high_water) {
    lua_pushboolean(L, 0);
    return 1;
  }
  c->want_drain = 1;
  lua_pushboolean(L, 1);
  return 1;
}

static int rn_conn_gc(lua_State *L) {
  rn_conn **b = rn__conn_box(L, 1);
  if (*b) {
    rn_conn *c = *b;
    *b = NULL;
    rn__conn_unref(c);
  }
  return 0;
}

static int rn_conn_tostring(lua_State *L) {
  rn_conn **b = rn__conn_box(L, 1);
  if (!*b)
    lua_pushliteral(L, "relaynet.conn (released)");
  else if ((*b)->state == RN_CS_CLOSED)
    lua_pushfstring(L, "relaynet.conn %I (closed)", (lua_Integer)(*b)->id);
  else
    lua_pushfstring(L, "relaynet.conn %I (%p)", (lua_Integer)(*b)->id, (void *)*b);
  return 1;
}

/* core.broadcast(server_or_nil, data, binary, except_conn) -> count.
 * One refcounted message is shared by every server connection's queue. */
static int rn_broadcast(lua_State *L) {
  rn_loop *l = rn__loop_get(L);
  rn_server *s = NULL;
  size_t len;
  const char *data;
  int binary, count = 0;
  rn_msg *m;
  rn_conn *c, *next, *except = NULL;
  if (!lua_isnil(L, 1)) {
    rn_server **sb = (rn_server **)luaL_checkudata(L, 1, RN_SERVER_MT);
    s = *sb;
    if (!s)
      return luaL_argerror(L, 1, "server is released");
  }
  data = luaL_checklstring(L, 2, &len);
  binary = lua_toboolean(L, 3);
  if (!lua_isnoneornil(L, 4))
    except = rn__conn_check(L, 4);
  if (!l->running) {
    lua_pushinteger(L, 0);
    return 1;
  }
  m = rn__msg_new(data, len, binary);
  if (!m)
    return luaL_error(L, "out of memory");
  for (c = l->conns; c; c = next) {
    int queued;
    next = c->next;
    if (c->client || !c->srv || c->internal || c->state != RN_CS_OPEN || !c->wsi || c == except)
      continue;
    if (s && c->srv != s)
      continue;
    if (rn__send_refused(c, len))
      continue; /* full: this one misses the message */
    c->refcnt++; /* a failed write may close it synchronously */
    if (rn__conn_enqueue(c, m, 0, &queued) == 0)
      count++;
    rn__conn_unref(c);
  }
  rn__msg_unref(m);
  lua_pushinteger(L, count);
  return 1;
}

void rn__conn_open_lua(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"send", rn_conn_send},
    {"close", rn_conn_close},
    {"info", rn_conn_info},
    {"queued", rn_conn_queued},
    {"want_drain", rn_conn_want_drain},
    {"pause", rn_conn_pause},
    {"set_internal", rn_conn_set_internal},
    {"set_rate_scale", rn_conn_set_rate_scale},
    {NULL, NULL}};
  static const luaL_Reg meta[] = {
    {"__gc", rn_conn_gc},
    {"__tostring", rn_conn_tostring},
    {NULL, NULL}};
  luaL_newmetatable(L, RN_CONN_MT);
  lua_pushvalue(L, -1);
  luaL_setfuncs(L, meta, 1);
  luaL_newlibtable(L, methods);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, methods, 1);
  lua_setfield(L, -2, "__index");
  /* core.conn_send: the send method without the __index look-up. */
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, rn_conn_send, 1);
  lua_setfield(L, -3, "conn_send");
  lua_pop(L, 1);
  lua_pushcfunction(L, rn_broadcast);
  lua_setfield(L, -2, "broadcast");
}

/* The Lua-visible limits: name, kind and where each lives in rn_limits.
 * Kinds: 'z' size_t, 'i' int, 'd' double (seconds). 'O' marks a bound that
 * 0 or false switches off; the others must be positive where noted below. */
typedef struct rn_limit_desc {
  const char *name;
  char kind;
  char off_ok; /* false is accepted as 0 */
  size_t offset;
} rn_limit_desc;

static const rn_limit_desc rn__limit_descs[] = {
  {"max_message", 'z', 0, offsetof(rn_limits, max_message)},
  {"max_body", 'z', 0, offsetof(rn_limits, max_body)},
  {"send_queue", 'z', 0, offsetof(rn_limits, send_queue)},
  {"send_high_water", 'z', 0, offsetof(rn_limits, send_high_water)},
  {"slow_timeout", 'd', 0, offsetof(rn_limits, slow_timeout)},
  {"max_connections", 'i', 0, offsetof(rn_limits, max_connections)},
  {"ping_interval", 'i', 0, offsetof(rn_limits, ping_interval)},
  {"pong_timeout", 'i', 0, offsetof(rn_limits, pong_timeout)},
  {"rx_buffer", 'z', 0, offsetof(rn_limits, rx_buffer)},
  {"body_timeout", 'd', 1, offsetof(rn_limits, body_timeout)},
  {"body_min_rate", 'z', 1, offsetof(rn_limits, body_min_rate)},
  {"max_connections_per_ip", 'i', 1, offsetof(rn_limits, max_connections_per_ip)},
  {"ws_msg_rate", 'z', 1, offsetof(rn_limits, ws_msg_rate)},
  {"ws_msg_burst", 'z', 0, offsetof(rn_limits, ws_msg_burst)},
  {"ws_byte_rate", 'z', 1, offsetof(rn_limits, ws_byte_rate)},
  {"ws_byte_burst", 'z', 0, offsetof(rn_limits, ws_byte_burst)},
  {"max_buffered", 'z', 1, offsetof(rn_limits, max_buffered)},
  {NULL, 0, 0, 0}};

/* Stores v in the field d describes; returns NULL, or what is wrong. */
static const char *rn__limit_set(rn_limits *lim, const rn_limit_desc *d, double v) {
  char *p = (char *)lim + d->offset;
  if (d->kind == 'd') {
    if (!(v >= 0) || (v == 0 && !d->off_ok) || v > 1e9)
      return d->off_ok ? "must be a non-negative number" : "must be a positive number";
    *(double *)p = v;
    return NULL;
  }
  if (!(v >= 0) || v != (double)(long long)v || v > 9.0e15)
    return "must be a non-negative integer";
  if (!strcmp(d->name, "ping_interval") || !strcmp(d->name, "pong_timeout"))
    v = v > 65535 ? 65535 : v;
  else if (!strcmp(d->name, "rx_buffer"))
    v = v < 128 ? 128 : v;
  if (d->kind == 'i')
    *(int *)p = v > 2147483647.0 ? 2147483647 : (int)v;
  else
    *(size_t *)p = (size_t)v;
  return NULL;
}

/* Keeps related limits consistent. */
static void rn__limits_fix(rn_limits *lim) {
  if (lim->send_high_water > lim->send_queue)
    lim->send_high_water = lim->send_queue;
  /* A bucket must hold at least one message, and the byte bucket one
   * message of the largest size allowed. */
  if (lim->ws_msg_burst < 1)
    lim->ws_msg_burst = 1;
  if (lim->ws_byte_burst < lim->max_message)
    lim->ws_byte_burst = lim->max_message;
}

static rn_limits rn__base_limits;
static int rn__base_ready;

/* The defaults in effect: the built-in ones overridden by RELAYNET_LIMITS
 * (read once per process). Raises on an unknown name or a bad value. */
static const rn_limits *rn__limits_base(lua_State *L) {
  const char *env;
  rn_limits lim;
  char buf[1024], *tok, *save = NULL;
  if (rn__base_ready)
    return &rn__base_limits;
  lim = rn__default_limits;
  env = getenv("RELAYNET_LIMITS");
  if (env && *env) {
    if (strlen(env) >= sizeof buf)
      luaL_error(L, "RELAYNET_LIMITS is longer than %d bytes", (int)sizeof buf - 1);
    strcpy(buf, env);
    for (tok = strtok_r(buf, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
      const rn_limit_desc *d;
      char *eq = strchr(tok, '='), *end;
      const char *bad;
      double v;
      if (!eq)
        luaL_error(L, "RELAYNET_LIMITS: expected name=value, got '%s'", tok);
      *eq = '\0';
      for (d = rn__limit_descs; d->name && strcmp(d->name, tok); d++)
        ;
      if (!d->name)
        luaL_error(L, "RELAYNET_LIMITS: unknown limit '%s'", tok);
      v = strtod(eq + 1, &end);
      if (end == eq + 1 || *end)
        luaL_error(L, "RELAYNET_LIMITS: limit '%s' needs a number", tok);
      if ((bad = rn__limit_set(&lim, d, v)) != NULL)
        luaL_error(L, "RELAYNET_LIMITS: limit '%s' %s", tok, bad);
    }
  }
  rn__limits_fix(&lim);
  rn__base_limits = lim;
  rn__base_ready = 1;
  return &rn__base_limits;
}

/* Copies Lua-visible limits from a table at idx into lim (missing fields
 * keep their defaults). Raises on a wrong type or an out-of-range value.
 * Bounds that can be switched off take 0 or false. */
void rn__limits_from_table(lua_State *L, int idx, rn_limits *lim) {
  const rn_limit_desc *d;
  *lim = *rn__limits_base(L);
  if (lua_isnoneornil(L, idx))
    return;
  for (d = rn__limit_descs; d->name; d++) {
    const char *bad;
    double v;
    int isnum;
    lua_getfield(L, idx, d->name);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      continue;
    }
    if (d->off_ok && lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
      v = 0;
    } else {
      v = (double)lua_tonumberx(L, -1, &isnum);
      if (!isnum)
        v = -1;
    }
    lua_pop(L, 1);
    if ((bad = rn__limit_set(lim, d, v)) != NULL)
      luaL_error(L, "limit '%s' %s", d->name, bad);
  }
  rn__limits_fix(lim);
}

/* Pushes the default limits in effect as a table (for documentation and
 * tests): the built-in ones, or RELAYNET_LIMITS's where it sets them. */
int rn__limits_defaults(lua_State *L) {
  const rn_limits *b = rn__limits_base(L);
  const rn_limit_desc *d;
  lua_createtable(L, 0, 18);
  for (d = rn__limit_descs; d->name; d++) {
    const char *p = (const char *)b + d->offset;
    if (d->kind == 'd')
      lua_pushnumber(L, *(const double *)p);
    else if (d->kind == 'i')
      lua_pushinteger(L, *(const int *)p);
    else
      lua_pushinteger(L, (lua_Integer) * (const size_t *)p);
    lua_setfield(L, -2, d->name);
  }
  return 1;
}
