/* libFuzzer harness: the WebSocket receive path that is ours (csrc/rn_recv.c,
 * rn_close.c, rn_utf8.c, rn_sendq.c): rn__conn_receive's reassembly, size
 * limit, rate limit and incremental UTF-8 validation, rn__utf8_check itself,
 * and the close-frame checks rn__conn_check_close / rn__conn_peer_close.
 *
 * How it is driven: libwebsockets has already parsed the frame headers,
 * unmasked the payload and handled control frames by the time it calls
 * rn__conn_receive(c, wsi, in, len); from the wsi that function only asks
 * lws_is_final_fragment() and lws_frame_is_binary(), and on failure it writes
 * a close frame. Running a real server in-process would put lws's own parser
 * (not ours, and not built with the sanitizers) between the fuzzer and this
 * code, at a hundredth of the speed. So this file is linked with those
 * files of csrc/ (fuzz/build.sh) and replaces, at link time, the handful of
 * lws and loop functions they call with a scripted fake: the fuzz input is
 * a sequence of fragments, each with its FIN and binary bits, and the fake
 * answers for the fragment being delivered. Nothing in csrc/ is changed.
 *
 * Input: byte 0 picks the configuration (max_message, event arena or malloc,
 * token buckets on or off, server or client connection, the connection's
 * rate scale); then records of
 * [flags][len][len bytes], flags bit 0 = FIN, bit 1 = binary, bits 2-7 =
 * milliseconds of fake time that pass before the fragment (x 8).
 *
 * Checked against a model written independently of csrc/ (a code-point
 * decoder for UTF-8, the IANA close-code list): every message delivered has
 * exactly the bytes and binary flag of its fragments; the connection fails
 * with 1009 exactly when a message would exceed max_message, with 1007
 * exactly when the text so far cannot be the start of valid UTF-8 (or a final
 * fragment leaves a sequence incomplete); with the token buckets on, 1008 may
 * come first; nothing is delivered after a failure; the reassembly buffer
 * never exceeds max_message. rn__utf8_check and rn__conn_check_close must
 * give exactly the model's answers for the whole input and each fragment. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rn.h"

#define CHECK(cond, ...)                                       \
  do {                                                         \
    if (!(cond)) {                                             \
      fprintf(stderr, "ws_receive: check failed: %s: ", #cond); \
      fprintf(stderr, __VA_ARGS__);                            \
      fputc('\n', stderr);                                     \
      abort();                                                 \
    }                                                          \
  } while (0)

/* ---- the fake lws and loop ------------------------------------------------ */

static int g_final, g_binary;
static uint64_t g_now;
static int g_close_code; /* the code of the close frame written, 0: none */
static int g_use_arena;
static unsigned char g_arena[1 << 16];
static size_t g_arena_len;
static rn_event g_ev[4];
static int g_nev;
static unsigned char g_scratch[1 << 16];

int lws_is_final_fragment(struct lws *wsi) { return g_final; }
int lws_frame_is_binary(struct lws *wsi) { return g_binary; }
int lws_partial_buffered(struct lws *wsi) { return 0; }
/* Each fragment is a whole frame: nothing of it is left to come. */
size_t lws_remaining_packet_payload(struct lws *wsi) { return 0; }
/* rn_close.c's DROP_PROTOCOL hook (never called by this harness). */
int lws_get_close_length(struct lws *wsi) { return 0; }
unsigned char *lws_get_close_payload(struct lws *wsi) { return NULL; }
lws_sockfd_type lws_get_socket_fd(struct lws *wsi) { return -1; }
void lws_close_reason(struct lws *wsi, enum lws_close_status status, unsigned char *buf, size_t len) {}
int lws_callback_on_writable(struct lws *wsi) { return 1; }
int lws_rx_flow_control(struct lws *wsi, int enable) { return 0; }
void lws_set_timeout(struct lws *wsi, enum pending_timeout reason, int secs) {}
void lws_cancel_service(struct lws_context *context) {}
int lws_write(struct lws *wsi, unsigned char *buf, size_t len, enum lws_write_protocol wp) {
  if (wp == RN_WRITE_CLOSE) {
    CHECK(len >= 2 && len <= 125, "close frame of %zu bytes", len);
    CHECK(g_close_code == 0, "a second close frame");
    g_close_code = (buf[0] << 8) | buf[1];
  }
  return (int)len;
}
uint64_t uv_now(const uv_loop_t *loop) { return g_now; }
int rn__arena_put(rn_loop *l, const void *p, size_t len, size_t *off) {
  if (!g_use_arena || g_arena_len + len > sizeof g_arena)
    return -1;
  memcpy(g_arena + g_arena_len, p, len);
  *off = g_arena_len;
  g_arena_len += len;
  return 0;
}
int rn__event_push(rn_loop *l, const rn_event *ev) {
  CHECK(g_nev < 4, "more than one event for one fragment");
  g_ev[g_nev++] = *ev;
  if (ev->conn)
    ev->conn->refcnt++;
  return 0;
}
unsigned char *rn__scratch(rn_loop *l, size_t len) { return len <= sizeof g_scratch ? g_scratch : NULL; }
rn_loop *rn__loop_get(lua_State *L) { abort(); }
void rn__server_unref(rn_server *s) {}
int rn__fail(lua_State *L, const char *code, const char *fmt, ...) { abort(); }

/* ---- the model -------------------------------------------------------------- */

/* Is s[0..n) one well-formed UTF-8 sequence (RFC 3629)? */
static int ref_seq_ok(const unsigned char *s, size_t n) {
  unsigned long cp;
  size_t k;
  static const unsigned long min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (n == 2) cp = s[0] & 0x1F;
  else if (n == 3) cp = s[0] & 0x0F;
  else cp = s[0] & 0x07;
  for (k = 1; k < n; k++) {
    if ((s[k] & 0xC0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[k] & 0x3F);
  }
  return cp >= min_cp[n] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
}

/* -1: s cannot begin valid UTF-8; otherwise the length of a trailing
 * incomplete sequence that some continuation would complete (0..3). */
static int ref_utf8(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char b = s[i];
    size_t len;
    if (b < 0x80) { i++; continue; }
    if ((b & 0xE0) == 0xC0) len = 2;
    else if ((b & 0xF0) == 0xE0) len = 3;
    else if ((b & 0xF8) == 0xF0) len = 4;
    else return -1;
    if (i + len > n) {
      /* Incomplete: does any completion make it valid? Only the second byte
       * carries range constraints; later ones just need to be 10xxxxxx. */
      unsigned char seq[4];
      size_t have = n - i, k;
      unsigned c2;
      memcpy(seq, s + i, have);
      for (k = have; k < len; k++)
        seq[k] = 0x80;
      if (have >= 2)
        return ref_seq_ok(seq, len) ? (int)have : -1;
      for (c2 = 0x80; c2 <= 0xBF; c2++) {
        seq[1] = (unsigned char)c2;
        if (ref_seq_ok(seq, len))
          return (int)have;
      }
      return -1;
    }
    if (!ref_seq_ok(s + i, len))
      return -1;
    i += len;
  }
  return 0;
}

static int ref_close_check(const unsigned char *p, size_t n) {
  static const int codes[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014};
  int code, ok = 0;
  size_t k;
  if (n == 0) return 0;
  if (n == 1) return 1002;
  code = p[0] * 256 + p[1];
  for (k = 0; k < sizeof codes / sizeof codes[0]; k++)
    ok |= code == codes[k];
  if (code >= 3000 && code <= 4999) ok = 1;
  if (!ok) return 1002;
  return ref_utf8(p + 2, n - 2) == 0 ? 0 : 1007;
}

/* ---- the harness ------------------------------------------------------------ */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const size_t max_messages[4] = {0, 5, 64, 1000};
  static rn_loop loop;
  static rn_server srv;
  static rn_client_opts cl;
  rn_limits lim;
  rn_conn *c;
  unsigned char model[1 << 16];
  size_t mlen = 0, pos = 1, maxrx = 0;
  int mactive = 0, mbinary = 0, rates, failed = 0;

  /* The pure functions, on the whole input. */
  CHECK(rn__utf8_check(data, size) == ref_utf8(data, size), "rn__utf8_check %d, model %d",
        rn__utf8_check(data, size), ref_utf8(data, size));
  CHECK(rn__conn_check_close(data, size) == ref_close_check(data, size), "rn__conn_check_close");
  if (size == 0)
    return 0;

  memset(&lim, 0, sizeof lim);
  lim.max_message = max_messages[data[0] & 3];
  g_use_arena = (data[0] >> 2) & 1;
  rates = (data[0] >> 3) & 1;
  if (rates) {
    lim.ws_msg_rate = 5;
    lim.ws_msg_burst = 3;
    lim.ws_byte_rate = 100;
    lim.ws_byte_burst = lim.max_message > 50 ? lim.max_message : 50;
  }
  memset(&loop, 0, sizeof loop);
  c = (rn_conn *)calloc(1, sizeof *c);
  c->L = &loop;
  if ((data[0] >> 4) & 1) {
    cl.lim = lim;
    c->cl = &cl;
    c->client = 1;
  } else {
    srv.lim = lim;
    srv.L = &loop;
    c->srv = &srv;
  }
  c->rate_scale = (uint8_t)((data[0] >> 5) & 7); /* conn:set_rate_scale (0 counts as 1) */
  c->wsi = (struct lws *)&loop; /* never dereferenced: the fake answers */
  c->state = RN_CS_OPEN;
  c->refcnt = 1;
  g_now = 1000;
  g_close_code = 0;
  g_arena_len = 0;

  while (pos < size) {
    unsigned flags = data[pos++];
    size_t len = pos < size ? data[pos++] : 0;
    const unsigned char *in = data + pos;
    int expect = 0, i;
    if (len > size - pos)
      len = size - pos;
    pos += len;
    g_final = flags & 1;
    g_binary = (flags >> 1) & 1;
    g_now += (flags >> 2) * 8;
    g_nev = 0;

    CHECK(rn__utf8_check(in, len) == ref_utf8(in, len), "rn__utf8_check on a fragment");
    CHECK(rn__conn_check_close(in, len) == ref_close_check(in, len), "rn__conn_check_close on a fragment");

    /* What the model expects from this fragment. */
    if (!failed) {
      if (!mactive) {
        mactive = 1;
        mbinary = g_binary;
        mlen = 0;
      }
      if (mlen + len > lim.max_message) {
        expect = 1009;
      } else {
        int st;
        memcpy(model + mlen, in, len);
        mlen += len;
        st = mbinary ? 0 : ref_utf8(model, mlen);
        if (st < 0 || (g_final && st > 0))
          expect = 1007;
      }
    }

    CHECK(rn__conn_receive(c, (struct lws *)&loop, in, len) == 0, "rn__conn_receive returned non-zero");
    if (c->rxcap > maxrx)
      maxrx = c->rxcap;
    CHECK(c->rxcap <= lim.max_message || c->rxcap == 0, "rx buffer %zu > max_message %zu", c->rxcap,
          lim.max_message);

    if (failed) {
      CHECK(g_nev == 0, "a message after the connection failed");
      continue;
    }
    if (g_close_code) {
      failed = 1;
      CHECK(g_nev == 0, "a message and a close for one fragment");
      CHECK(c->state == RN_CS_CLOSING, "closed without the CLOSING state");
      if (g_close_code == 1008 && rates && !c->client)
        continue; /* the token bucket ran out first: allowed */
      CHECK(g_close_code == expect, "closed with %d, model expects %d", g_close_code, expect);
      continue;
    }
    CHECK(expect == 0, "not closed, model expects %d", expect);
    if (!g_final) {
      CHECK(g_nev == 0, "a message before its final fragment");
      continue;
    }
    CHECK(g_nev == 1, "%d events for a final fragment", g_nev);
    {
      rn_event *ev = &g_ev[0];
      const unsigned char *got = ev->in_arena ? g_arena + ev->off : (const unsigned char *)ev->data;
      CHECK(ev->type == RN_EV_MESSAGE && ev->conn == c, "event type/conn");
      CHECK(ev->flag == mbinary, "binary flag %d, model %d", ev->flag, mbinary);
      CHECK(ev->len == mlen, "message of %zu bytes, model %zu", ev->len, mlen);
      CHECK(mlen == 0 || memcmp(got, model, mlen) == 0, "message bytes differ");
      if (!ev->in_arena)
        free(ev->data);
      for (i = 0; i < g_nev; i++)
        c->refcnt--;
    }
    mactive = 0;
    mlen = 0;
  }

  /* A peer close frame with a valid payload is recorded as sent. */
  if (rn__conn_check_close(data, size) == 0) {
    rn__conn_peer_close(c, data, size);
    CHECK(c->peer_code == (size >= 2 ? data[0] * 256 + data[1] : 1005), "peer code");
    CHECK(c->peer_reason_len == (size > 2 ? (size - 2 > 123 ? 123 : size - 2) : 0), "peer reason length");
  }
  free(c->rx);
  free(c->close_reason);
  free(c->peer_reason);
  free(c);
  return 0;
}
