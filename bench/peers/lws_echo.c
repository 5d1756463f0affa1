/*
 * lws_echo: the floor for relaynet's stack. A minimal libwebsockets 4.1.6
 * WebSocket echo server on a libuv loop, configured like relaynet's servers
 * (rx_buffer 1024, tx_packet_size 64 KiB, pt_serv_buf_size 16 KiB, 8 KiB
 * headers, the same keepalive policy), with nothing relaynet adds on top: no
 * Lua, no events, no UTF-8 validation, no limits.
 *
 *   lws_echo --port N [--writeable] [--broadcast] [--rx-buffer BYTES]
 *            [--tls-cert FILE --tls-key FILE]
 *
 * Default: a whole message is written back at once when nothing is queued
 * for that connection and lws holds no partial write (the pattern relaynet
 * uses); otherwise it is queued and written from LWS_CALLBACK_SERVER_WRITEABLE.
 * --writeable: always queue and write only from WRITEABLE (the canonical lws
 * pattern; on libuv each POLLOUT toggle costs uv_poll_start calls).
 * --broadcast: every message received is sent to every connection (one
 * shared, refcounted buffer), the sender included, instead of echoed.
 * --tls-cert/--tls-key: serve wss (https) with these PEM files, set up as
 * relaynet sets up a TLS server (lws's OpenSSL backend, ALPN http/1.1 only).
 *
 * Fragmented messages are reassembled (messages are echoed whole, as the
 * other servers in the benchmark do). SIGINT/SIGTERM exit at once with
 * status 0 (so valgrind writes its output).
 */
#include <libwebsockets.h>
#include <uv.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct msg {
  int refcnt;
  int binary;
  size_t len;
  unsigned char buf[]; /* LWS_PRE headroom, then the payload */
} msg;

typedef struct qnode {
  struct qnode *next;
  msg *m;
} qnode;

typedef struct pss {
  struct pss *next, *prev; /* every open connection (broadcast) */
  struct lws *wsi;
  unsigned char *rx; /* LWS_PRE + reassembly buffer */
  size_t rxlen, rxcap;
  int rx_binary;
  qnode *qhead, *qtail;
} pss;

static int opt_writeable, opt_broadcast;
static int opt_rx_buffer = 1024;
static const char *opt_tls_cert, *opt_tls_key;
static pss *all;
static unsigned char *scratch;
static size_t scratch_cap;

static msg *msg_new(const unsigned char *data, size_t len, int binary) {
  msg *m = malloc(sizeof *m + LWS_PRE + len);
  if (!m)
    return NULL;
  m->refcnt = 1;
  m->binary = binary;
  m->len = len;
  memcpy(m->buf + LWS_PRE, data, len);
  return m;
}

static void msg_unref(msg *m) {
  if (--m->refcnt == 0)
    free(m);
}

static int enqueue(pss *p, msg *m) {
  qnode *n = malloc(sizeof *n);
  if (!n)
    return -1;
  n->next = NULL;
  n->m = m;
  m->refcnt++;
  if (p->qtail)
    p->qtail->next = n;
  else
    p->qhead = n;
  p->qtail = n;
  lws_callback_on_writable(p->wsi);
  return 0;
}

static unsigned char *scratch_get(size_t len) {
  if (LWS_PRE + len > scratch_cap) {
    size_t cap = scratch_cap ? scratch_cap : 4096;
    while (cap < LWS_PRE + len)
      cap *= 2;
    scratch = realloc(scratch, cap);
    if (!scratch) {
      fprintf(stderr, "lws_echo: out of memory\n");
      exit(1);
    }
    scratch_cap = cap;
  }
  return scratch + LWS_PRE;
}

static int write_now(struct lws *wsi, unsigned char *p, size_t len, int binary) {
  return lws_write(wsi, p, len, binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT) < 0 ? -1 : 0;
}

/* Sends one whole message to p: at once when possible, else queued. `m` may
 * be NULL (echo of data that is not in a msg yet). */
static int deliver(pss *p, msg *m, const unsigned char *data, size_t len, int binary) {
  if (!opt_writeable && !p->qhead && !lws_partial_buffered(p->wsi)) {
    if (m)
      return write_now(p->wsi, m->buf + LWS_PRE, m->len, m->binary);
    {
      unsigned char *s = scratch_get(len);
      memcpy(s, data, len);
      return write_now(p->wsi, s, len, binary);
    }
  }
  if (m)
    return enqueue(p, m);
  {
    msg *n = msg_new(data, len, binary);
    int rc;
    if (!n)
      return -1;
    rc = enqueue(p, n);
    msg_unref(n);
    return rc;
  }
}

static int on_message(pss *p, const unsigned char *data, size_t len, int binary) {
  if (opt_broadcast) {
    msg *m = msg_new(data, len, binary);
    pss *q, *next;
    if (!m)
      return -1;
    for (q = all; q; q = next) {
      next = q->next;
      if (deliver(q, m, NULL, 0, 0) < 0 && q == p) {
        msg_unref(m);
        return -1;
      }
    }
    msg_unref(m);
    return 0;
  }
  return deliver(p, NULL, data, len, binary);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
  pss *p = (pss *)user;
  switch (reason) {
  case LWS_CALLBACK_ESTABLISHED:
    memset(p, 0, sizeof *p);
    p->wsi = wsi;
    p->next = all;
    if (all)
      all->prev = p;
    all = p;
    return 0;
  case LWS_CALLBACK_RECEIVE: {
    int final = lws_is_final_fragment(wsi);
    if (lws_is_first_fragment(wsi)) {
      p->rx_binary = lws_frame_is_binary(wsi);
      p->rxlen = 0;
    }
    if (final && p->rxlen == 0)
      return on_message(p, in, len, p->rx_binary);
    if (LWS_PRE + p->rxlen + len > p->rxcap) {
      size_t cap = p->rxcap ? p->rxcap : 4096;
      while (cap < LWS_PRE + p->rxlen + len)
        cap *= 2;
      p->rx = realloc(p->rx, cap);
      if (!p->rx)
        return -1;
      p->rxcap = cap;
    }
    memcpy(p->rx + LWS_PRE + p->rxlen, in, len);
    p->rxlen += len;
    if (!final)
      return 0;
    {
      int rc = on_message(p, p->rx + LWS_PRE, p->rxlen, p->rx_binary);
      free(p->rx); /* an idle connection keeps no buffer */
      p->rx = NULL;
      p->rxcap = p->rxlen = 0;
      return rc;
    }
  }
  case LWS_CALLBACK_SERVER_WRITEABLE: {
    int budget = 16;
    while (p->qhead && budget-- > 0 && !lws_partial_buffered(wsi)) {
      qnode *n = p->qhead;
      int rc;
      p->qhead = n->next;
      if (!p->qhead)
        p->qtail = NULL;
      rc = write_now(wsi, n->m->buf + LWS_PRE, n->m->len, n->m->binary);
      msg_unref(n->m);
      free(n);
      if (rc < 0)
        return -1;
    }
    if (p->qhead || lws_partial_buffered(wsi))
      lws_callback_on_writable(wsi);
    return 0;
  }
  case LWS_CALLBACK_CLOSED:
    if (p->wsi) {
      qnode *n, *next;
      if (p->prev)
        p->prev->next = p->next;
      else
        all = p->next;
      if (p->next)
        p->next->prev = p->prev;
      for (n = p->qhead; n; n = next) {
        next = n->next;
        msg_unref(n->m);
        free(n);
      }
      free(p->rx);
      p->wsi = NULL;
    }
    return 0;
  default:
    break;
  }
  return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static void on_signal(uv_signal_t *s, int signum) {
  (void)s;
  (void)signum;
  fflush(stdout);
  exit(0);
}

int main(int argc, char **argv) {
  struct lws_context_creation_info info;
  struct lws_protocols protocols[2];
  lws_retry_bo_t retry;
  struct lws_context *ctx;
  struct lws_vhost *vh;
  uv_loop_t loop;
  uv_signal_t sint, sterm;
  void *foreign[1];
  int port = 0, i;

  for (i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--port") && i + 1 < argc)
      port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--rx-buffer") && i + 1 < argc)
      opt_rx_buffer = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--writeable"))
      opt_writeable = 1;
    else if (!strcmp(argv[i], "--broadcast"))
      opt_broadcast = 1;
    else if (!strcmp(argv[i], "--tls-cert") && i + 1 < argc)
      opt_tls_cert = argv[++i];
    else if (!strcmp(argv[i], "--tls-key") && i + 1 < argc)
      opt_tls_key = argv[++i];
    else {
      fprintf(stderr, "usage: lws_echo --port N [--writeable] [--broadcast] [--rx-buffer BYTES]\n"
                      "                [--tls-cert FILE --tls-key FILE]\n");
      return 2;
    }
  }
  if (!opt_tls_cert != !opt_tls_key) {
    fprintf(stderr, "lws_echo: --tls-cert and --tls-key go together\n");
    return 2;
  }
  if (port <= 0) {
    fprintf(stderr, "lws_echo: --port is required\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  lws_set_log_level(LLL_ERR, NULL);
  uv_loop_init(&loop);

  memset(&info, 0, sizeof info);
  foreign[0] = &loop;
  info.foreign_loops = foreign;
  info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
  if (opt_tls_cert)
    info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.pt_serv_buf_size = 16384;
  info.max_http_header_data = 8192;
  info.timeout_secs = 10;
  ctx = lws_create_context(&info);
  if (!ctx) {
    fprintf(stderr, "lws_echo: cannot create the context (libwebsockets-evlib-uv?)\n");
    return 1;
  }

  memset(protocols, 0, sizeof protocols);
  protocols[0].name = "echo";
  protocols[0].callback = callback;
  protocols[0].per_session_data_size = sizeof(pss);
  protocols[0].rx_buffer_size = (size_t)opt_rx_buffer;
  protocols[0].tx_packet_size = 65536;
  memset(&retry, 0, sizeof retry);
  retry.secs_since_valid_ping = 30;
  retry.secs_since_valid_hangup = 60;

  memset(&info, 0, sizeof info);
  info.port = port;
  info.iface = "127.0.0.1";
  info.protocols = protocols;
  info.vhost_name = "lws_echo";
  info.options = LWS_SERVER_OPTION_DISABLE_IPV6 | LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND;
  info.retry_and_idle_policy = &retry;
  if (opt_tls_cert) {
    info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.ssl_cert_filepath = opt_tls_cert;
    info.ssl_private_key_filepath = opt_tls_key;
    info.alpn = "http/1.1";
  }
  vh = lws_create_vhost(ctx, &info);
  if (!vh) {
    fprintf(stderr, "lws_echo: cannot listen on port %d\n", port);
    return 1;
  }

  uv_signal_init(&loop, &sint);
  uv_signal_init(&loop, &sterm);
  uv_signal_start(&sint, on_signal, SIGINT);
  uv_signal_start(&sterm, on_signal, SIGTERM);
  printf("lws_echo on %s://127.0.0.1:%d/ (%s%s)\n", opt_tls_cert ? "wss" : "ws", port,
         opt_writeable ? "writeable" : "direct",
         opt_broadcast ? ", broadcast" : "");
  fflush(stdout);
  uv_run(&loop, UV_RUN_DEFAULT);
  return 0;
}
