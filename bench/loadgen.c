/*
 * loadgen: a WebSocket load client on libuv for the relaynet benchmarks.
 *
 * The client side of RFC 6455 is written here by hand: the HTTP upgrade
 * (with a random key and a checked Sec-WebSocket-Accept), masked frames, and
 * a streaming parser for server frames (any length, fragmented messages,
 * ping answered with pong, close answered). It runs in one thread on one
 * core; run it pinned to a core other than the server's.
 *
 * wss:// URLs speak TLS through OpenSSL over memory BIOs (the sockets stay
 * libuv's): every TLS connection makes a full handshake (no session
 * resumption) and verifies the server's certificate and host name against
 * --ca FILE (--no-verify skips that). Each WebSocket frame sent is one
 * SSL_write, so one TLS record.
 *
 *   loadgen --url ws[s]://127.0.0.1:PORT/ --mode echo|idle|churn|broadcast-recv
 *           [--conns N] [--inflight K] [--size BYTES] [--duration S]
 *           [--warmup S] [--count M] [--server-pid PID] [--binary]
 *           [--ca FILE | --no-verify]
 *           [--recv-urls URL,URL,...] [--recv-size BYTES] [--server-pids PID,PID,...]
 *
 * Modes (each prints one JSON line on stdout):
 *   echo            N connections each keep K messages in flight; every echo
 *                   is timed (send -> whole echo received). With --count M
 *                   exactly M messages are sent in total and the run ends when
 *                   all are back (no warm-up; used by callgrind.sh).
 *   idle            opens N connections, holds them, reports the server's
 *                   RSS growth per connection.
 *   churn           N slots loop connect + upgrade + close handshake;
 *                   cycles/s and the server's RSS before/after (--count:
 *                   measured cycles), and the time from connect() to the
 *                   101 response read (TCP + TLS + HTTP upgrade: open_p50_us,
 *                   open_p99_us).
 *   broadcast-recv  N receiving connections plus one sender. Every message
 *                   the sender sends is expected on every receiver (the
 *                   server broadcasts what it receives). The sender keeps K
 *                   broadcasts in flight: a broadcast completes when the last
 *                   receiver has it. Reports deliveries/s. With
 *                   --recv-urls the receivers are spread over those
 *                   servers in turn (connection i to URL i mod n) and the
 *                   sender alone uses --url; --recv-size is the length each
 *                   delivery must have (default: --size), for servers that
 *                   wrap the message (a pub/sub frame).
 *
 * --server-pids sums the CPU time of several server processes (a mesh of
 * nodes) over the measured window; RSS figures are those of the first.
 *
 * The mask key is random per connection (not per frame) and every message
 * of a connection is the same prebuilt masked frame, so the client spends
 * nothing on masking per message. Text frames carry ASCII (valid UTF-8).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <uv.h>

/* ---- options ------------------------------------------------------------ */

enum { M_ECHO, M_IDLE, M_CHURN, M_BCAST };

static struct {
  char host[64];
  int port;
  char path[256];
  int conns;
  int inflight;
  size_t size;
  double duration;
  double warmup;
  long long count;
  int mode;
  int server_pid;
  int binary;
  int connect_parallel;
  double settle;
  int tls;            /* wss:// */
  char tls_host[256]; /* the URL's host: SNI and the name verified */
  const char *ca;     /* --ca FILE */
  int no_verify;      /* --no-verify */
} opt = {"127.0.0.1", 0, "/", 1, 1, 16, 5.0, 1.0, 0, M_ECHO, 0, 0, 128, 1.0, 0, "", NULL, 0};

static SSL_CTX *tls_ctx; /* set when opt.tls */

/* Where connections go: eps[0] is --url; eps[1..] are --recv-urls. */
#define MAX_EPS 16
typedef struct endpoint {
  char host[64];
  char tls_host[256];
  int port;
  char path[256];
} endpoint;
static endpoint eps[MAX_EPS];
static int n_eps = 1;
static size_t recv_size;      /* --recv-size (0: --size) */
static int server_pids[64];  /* --server-pids */
static int n_server_pids;

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "loadgen: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(2);
}

/* ---- SHA-1 and base64 (for the handshake) ------------------------------ */

static uint32_t rol(uint32_t v, int n) { return (v << n) | (v >> (32 - n)); }

static void sha1(const unsigned char *msg, size_t len, unsigned char out[20]) {
  uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
  size_t total = ((len + 8) / 64 + 1) * 64, off;
  unsigned char *buf = calloc(1, total);
  uint64_t bits = (uint64_t)len * 8;
  int i;
  if (!buf)
    die("out of memory");
  memcpy(buf, msg, len);
  buf[len] = 0x80;
  for (i = 0; i < 8; i++)
    buf[total - 1 - i] = (unsigned char)(bits >> (8 * i));
  for (off = 0; off < total; off += 64) {
    uint32_t w[80], a, b, c, d, e;
    for (i = 0; i < 16; i++)
      w[i] = (uint32_t)buf[off + 4 * i] << 24 | (uint32_t)buf[off + 4 * i + 1] << 16 |
             (uint32_t)buf[off + 4 * i + 2] << 8 | buf[off + 4 * i + 3];
    for (i = 16; i < 80; i++)
      w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4];
    for (i = 0; i < 80; i++) {
      uint32_t f, k, t;
      if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
      else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
      else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
      else { f = b ^ c ^ d; k = 0xCA62C1D6; }
      t = rol(a, 5) + f + e + k + w[i];
      e = d; d = c; c = rol(b, 30); b = a; a = t;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
  }
  free(buf);
  for (i = 0; i < 5; i++) {
    out[4 * i] = (unsigned char)(h[i] >> 24);
    out[4 * i + 1] = (unsigned char)(h[i] >> 16);
    out[4 * i + 2] = (unsigned char)(h[i] >> 8);
    out[4 * i + 3] = (unsigned char)h[i];
  }
}

static void base64(const unsigned char *in, size_t len, char *out) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t i;
  for (i = 0; i + 2 < len; i += 3) {
    *out++ = tab[in[i] >> 2];
    *out++ = tab[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
    *out++ = tab[((in[i + 1] & 15) << 2) | (in[i + 2] >> 6)];
    *out++ = tab[in[i + 2] & 63];
  }
  if (i < len) {
    *out++ = tab[in[i] >> 2];
    if (i + 1 < len) {
      *out++ = tab[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
      *out++ = tab[(in[i + 1] & 15) << 2];
    } else {
      *out++ = tab[(in[i] & 3) << 4];
      *out++ = '=';
    }
    *out++ = '=';
  }
  *out = 0;
}

/* A small xorshift generator for keys and masks (not for security). */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

/* ---- /proc readers -------------------------------------------------------- */

/* utime + stime of a process, in seconds; -1 when unreadable. */
static double proc_cpu_one(int pid);

/* CPU seconds of the server: --server-pids summed, else --server-pid. */
static double proc_cpu(int pid) {
  double sum = 0, v;
  int i;
  if (n_server_pids == 0)
    return proc_cpu_one(pid);
  for (i = 0; i < n_server_pids; i++) {
    v = proc_cpu_one(server_pids[i]);
    if (v < 0)
      return -1;
    sum += v;
  }
  return sum;
}

static double proc_cpu_one(int pid) {
  char path[64], buf[2048], *p;
  FILE *f;
  size_t n;
  unsigned long long ut = 0, st = 0;
  int i;
  if (pid <= 0)
    return -1;
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  f = fopen(path, "r");
  if (!f)
    return -1;
  n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  p = strrchr(buf, ')');
  if (!p)
    return -1;
  p += 2; /* field 3 (state) starts here */
  for (i = 3; i < 14 && p; i++) {
    p = strchr(p, ' ');
    if (p)
      p++;
  }
  if (!p || sscanf(p, "%llu %llu", &ut, &st) != 2)
    return -1;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* A "VmXXX:" field of /proc/PID/status in kB; -1 when unreadable. */
static long proc_status_kb(int pid, const char *field) {
  char path[64], line[256];
  size_t flen = strlen(field);
  long v = -1;
  FILE *f;
  if (pid <= 0)
    return -1;
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  f = fopen(path, "r");
  if (!f)
    return -1;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, field, flen) && line[flen] == ':') {
      v = strtol(line + flen + 1, NULL, 10);
      break;
    }
  fclose(f);
  return v;
}

static double self_cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

/* ---- connections ---------------------------------------------------------- */

enum { S_FREE, S_CONNECTING, S_TLS, S_HANDSHAKE, S_OPEN, S_CLOSING, S_DONE };
enum { R_ECHO, R_IDLE, R_CHURN, R_RECV, R_SEND };

typedef struct conn {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_timer_t timer; /* churn: close-handshake deadline */
  int idx, role, state;
  int ep; /* its endpoint (eps[]) */
  int timer_on;
  SSL *ssl;           /* TLS: the session, over memory BIOs */
  uint64_t t_connect; /* when the connect began (churn: open latency) */
  char key[32];
  char hbuf[2048];
  size_t hlen;
  /* frame parser */
  unsigned char fh[14];
  int fhlen, fhneed;
  uint64_t remaining;
  int opcode, fin, masked;
  unsigned char mkey[4];
  uint64_t msglen;
  unsigned char ctrl[125];
  int ctrllen;
  int got_close;
  /* sending */
  unsigned char *frame; /* the prebuilt masked message frame */
  size_t framelen;
  uint32_t mask;
  uint64_t *ts; /* echo: send times, a ring of K */
  int ts_head, ts_count;
  long long sent, received;
} conn;

static uv_loop_t *loop;
static conn *conns;
static int nconns;       /* slots */
static int next_to_open; /* next slot to open (connect phase) */
static int n_to_open;    /* slots the connect phase opens */
static int opening;      /* connects + handshakes in progress */
static int open_count, failed_count;
static unsigned char *payload;
static uint64_t t_start;
static long long errors;

/* measurement */
static int measuring, finished;
static uint64_t m_t0;
static double m_cpu0, m_scpu0;
static long long m_msgs0, m_bytes0;
static long long total_msgs, total_bytes; /* echo: echoes received; bcast: deliveries */
static long long total_sent;
static uint32_t *lat; /* ns, capped */
static size_t lat_n, lat_cap;
static uv_timer_t phase_timer;

static void record_latency(uint64_t ns) {
  if (!measuring)
    return;
  if (lat_n == lat_cap) {
    lat_cap = lat_cap ? lat_cap * 2 : 1 << 16;
    lat = realloc(lat, lat_cap * sizeof *lat);
    if (!lat)
      die("out of memory");
  }
  lat[lat_n++] = ns > 0xFFFFFFFFull ? 0xFFFFFFFFu : (uint32_t)ns;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(double p) {
  size_t i;
  if (!lat_n)
    return 0;
  i = (size_t)(p * (double)(lat_n - 1) + 0.5);
  return lat[i] / 1000.0;
}

/* Builds a masked frame header + payload for `len` bytes with `opcode`. */
static unsigned char *build_frame(int opcode, const unsigned char *data, size_t len, uint32_t mask,
                                  size_t *outlen) {
  size_t hl = 2 + (len < 126 ? 0 : len < 65536 ? 2 : 8) + 4, i;
  unsigned char *f = malloc(hl + len + 1), *m;
  if (!f)
    die("out of memory");
  f[0] = (unsigned char)(0x80 | opcode);
  if (len < 126) {
    f[1] = (unsigned char)(0x80 | len);
  } else if (len < 65536) {
    f[1] = 0x80 | 126;
    f[2] = (unsigned char)(len >> 8);
    f[3] = (unsigned char)len;
  } else {
    f[1] = 0x80 | 127;
    for (i = 0; i < 8; i++)
      f[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
  }
  m = f + hl - 4;
  m[0] = (unsigned char)(mask >> 24);
  m[1] = (unsigned char)(mask >> 16);
  m[2] = (unsigned char)(mask >> 8);
  m[3] = (unsigned char)mask;
  for (i = 0; i < len; i++)
    f[hl + i] = data[i] ^ m[i & 3];
  *outlen = hl + len;
  return f;
}

typedef struct wreq {
  uv_write_t req;
  unsigned char *owned; /* freed when done (control frames) */
} wreq;

static void on_written(uv_write_t *req, int status) {
  wreq *w = (wreq *)req;
  (void)status;
  free(w->owned);
  free(w);
}

/* TLS: writes whatever OpenSSL has put in the connection's outgoing memory
 * BIO (records, handshake messages) to the socket. Returns 0, or -1 when
 * the write could not start. */
static int tls_flush(conn *c) {
  BIO *wb = SSL_get_wbio(c->ssl);
  size_t pend = BIO_ctrl_pending(wb);
  wreq *w;
  uv_buf_t b;
  if (!pend)
    return 0;
  w = malloc(sizeof *w);
  if (!w || !(w->owned = malloc(pend)))
    die("out of memory");
  if (BIO_read(wb, w->owned, (int)pend) != (int)pend)
    die("BIO_read of %zu pending bytes failed", pend);
  b = uv_buf_init((char *)w->owned, (unsigned)pend);
  if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0) {
    free(w->owned);
    free(w);
    return -1;
  }
  return 0;
}

/* Writes bufs[0..n) to the connection: as they are in one writev (plain;
 * they must live until written, owned is freed then), or each encrypted as
 * one TLS record and the records written in one uv_write (owned is freed at
 * once). Returns 0, or -1 when the write could not start. */
static int conn_write(conn *c, uv_buf_t *bufs, unsigned n, unsigned char *owned) {
  wreq *w;
  unsigned i;
  if (!c->ssl) {
    w = malloc(sizeof *w);
    if (!w)
      die("out of memory");
    w->owned = owned;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, on_written) != 0) {
      free(owned);
      free(w);
      return -1;
    }
    return 0;
  }
  for (i = 0; i < n; i++)
    if (bufs[i].len && SSL_write(c->ssl, bufs[i].base, (int)bufs[i].len) <= 0) {
      free(owned);
      return -1;
    }
  free(owned);
  return tls_flush(c);
}

/* Writes n copies of the connection's message frame in one writev. */
static void send_frames(conn *c, int n) {
  uv_buf_t bufs[64];
  int i, k;
  uint64_t now;
  if (n <= 0 || c->state != S_OPEN)
    return;
  now = uv_hrtime();
  while (n > 0) {
    k = n > 64 ? 64 : n;
    for (i = 0; i < k; i++) {
      bufs[i] = uv_buf_init((char *)c->frame, (unsigned)c->framelen);
      if (c->ts) {
        c->ts[(c->ts_head + c->ts_count) % opt.inflight] = now;
        c->ts_count++;
      }
    }
    if (conn_write(c, bufs, (unsigned)k, NULL) < 0) {
      errors++;
      return;
    }
    c->sent += k;
    total_sent += k;
    n -= k;
  }
}

static void send_control(conn *c, int opcode, const unsigned char *data, size_t len) {
  size_t fl;
  unsigned char *f = build_frame(opcode, data, len, (uint32_t)rnd(), &fl);
  uv_buf_t b = uv_buf_init((char *)f, (unsigned)fl);
  conn_write(c, &b, 1, f);
}

static void open_more(void);
static void start_conn(conn *c);
static void finish(void);

static void on_closed(uv_handle_t *h) {
  conn *c = (conn *)h->data;
  c->state = S_DONE;
  if (c->ssl) {
    SSL_free(c->ssl); /* frees its BIOs too */
    c->ssl = NULL;
  }
  if (opt.mode == M_CHURN && !finished) {
    start_conn(c); /* the next cycle on this slot */
  }
}


static void conn_close(conn *c) {
  if (c->state == S_DONE || c->state == S_FREE || uv_is_closing((uv_handle_t *)&c->tcp))
    return;
  if (c->timer_on) {
    uv_timer_stop(&c->timer);
    c->timer_on = 0;
  }
  c->state = S_CLOSING;
  uv_close((uv_handle_t *)&c->tcp, on_closed);
}

/* ---- per-mode message handling --------------------------------------- */

/* broadcast bookkeeping */
static int n_recv;               /* receiving connections */
static conn *sender;
static long long b_completed;     /* broadcasts every receiver has */
static long long b_sent;
static int *b_level;              /* ring: receivers that have message m */
static uint64_t *b_ts;            /* ring: send time of broadcast m */
static int b_ring;
static uint64_t b_last_progress;

/* churn bookkeeping */
static long long churn_cycles, churn_c0;
static long rss_before = -1, rss_after = -1, rss_max = -1;
static char rss_trace[4096];
static size_t rss_trace_len;

static int churn_cycle_done(conn *c);

static void message_done(conn *c, uint64_t len, uint64_t now, int *to_send) {
  c->received++;
  switch (c->role) {
  case R_ECHO:
    if (len != opt.size)
      errors++;
    if (c->ts_count > 0) {
      record_latency(now - c->ts[c->ts_head]);
      c->ts_head = (c->ts_head + 1) % opt.inflight;
      c->ts_count--;
    }
    total_msgs++;
    total_bytes += (long long)len;
    if (opt.count > 0) {
      if (total_sent + *to_send < opt.count)
        (*to_send)++;
      if (total_msgs >= opt.count)
        finish();
    } else if (!finished) {
      (*to_send)++;
    }
    break;
  case R_RECV: {
    long long m = c->received; /* this receiver now has broadcasts 1..m */
    if (len != (recv_size ? recv_size : opt.size))
      errors++;
    total_msgs++;
    total_bytes += (long long)len;
    if (m <= b_completed || m > b_completed + b_ring - 1) {
      errors++; /* cannot happen unless the server sent extra messages */
      break;
    }
    b_level[m % b_ring]++;
    while (b_level[(b_completed + 1) % b_ring] >= n_recv) {
      b_level[(b_completed + 1) % b_ring] = 0;
      b_completed++;
      record_latency(now - b_ts[b_completed % b_ring]);
      b_last_progress = now;
      if (!finished && sender && sender->state == S_OPEN) {
        b_ts[(b_sent + 1) % b_ring] = uv_hrtime();
        b_sent++;
        send_frames(sender, 1);
      }
    }
    break;
  }
  default:
    break; /* the sender's own copy, idle connections: ignored */
  }
}

/* Feeds n bytes of server frames. Returns 0, or -1 when the connection was
 * closed. */
static int feed(conn *c, const unsigned char *p, size_t n, uint64_t now, int *to_send) {
  const unsigned char *end = p + n;
  while (p < end) {
    if (c->fhneed) {
      while (p < end && c->fhlen < c->fhneed) {
        c->fh[c->fhlen++] = *p++;
        if (c->fhlen == 2) {
          int l7 = c->fh[1] & 0x7f;
          c->fhneed = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + ((c->fh[1] & 0x80) ? 4 : 0);
        }
      }
      if (c->fhlen < c->fhneed)
        return 0;
      {
        int l7 = c->fh[1] & 0x7f, i, off = 2;
        uint64_t len = (uint64_t)l7;
        if (l7 == 126) {
          len = (uint64_t)c->fh[2] << 8 | c->fh[3];
          off = 4;
        } else if (l7 == 127) {
          len = 0;
          for (i = 0; i < 8; i++)
            len = len << 8 | c->fh[2 + i];
          off = 10;
        }
        c->masked = (c->fh[1] & 0x80) != 0;
        if (c->masked)
          memcpy(c->mkey, c->fh + off, 4);
        c->fin = (c->fh[0] & 0x80) != 0;
        c->opcode = c->fh[0] & 0x0f;
        c->remaining = len;
        c->fhneed = 0;
        c->ctrllen = 0;
        if (c->opcode >= 8 && len > 125) {
          errors++;
          conn_close(c);
          return -1;
        }
      }
    }
    if (c->remaining) {
      size_t k = (size_t)(end - p) < c->remaining ? (size_t)(end - p) : (size_t)c->remaining;
      if (c->opcode >= 8) {
        memcpy(c->ctrl + c->ctrllen, p, k);
        c->ctrllen += (int)k;
      } else {
        c->msglen += k;
      }
      p += k;
      c->remaining -= k;
      if (c->remaining)
        return 0;
    }
    /* a whole frame */
    c->fhneed = 2;
    c->fhlen = 0;
    if (c->opcode >= 8 && c->masked) {
      int i;
      for (i = 0; i < c->ctrllen; i++)
        c->ctrl[i] ^= c->mkey[i & 3];
    }
    switch (c->opcode) {
    case 0: case 1: case 2:
      if (c->fin) {
        uint64_t len = c->msglen;
        c->msglen = 0;
        message_done(c, len, now, to_send);
      }
      break;
    case 8: /* close */
      c->got_close = 1;
      if (c->role == R_CHURN) {
        /* our close was answered: wait for the server to end TCP */
        break;
      }
      send_control(c, 8, c->ctrl, c->ctrllen >= 2 ? 2 : 0);
      if (!finished)
        errors++;
      conn_close(c);
      return -1;
    case 9: /* ping */
      send_control(c, 10, c->ctrl, (size_t)c->ctrllen);
      break;
    default:
      break;
    }
  }
  return 0;
}

static unsigned char readbuf[256 * 1024];

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = (char *)readbuf;
  buf->len = sizeof readbuf;
}

static void conn_opened(conn *c);
static void connect_progress(void);

static void handshake_failed(conn *c, const char *why) {
  if ((opt.mode != M_CHURN || !finished) && failed_count < 5)
    fprintf(stderr, "loadgen: connection %d: %s%s\n", c->idx, why,
            failed_count == 4 ? " (further failures not shown)" : "");
  failed_count++;
  opening--;
  conn_close(c);
  if (opt.mode != M_CHURN)
    connect_progress();
}

/* Parses the 101 response; returns bytes consumed (0: need more; -1: bad). */
static long parse_handshake(conn *c) {
  char *endh, *p, expect[64], want[128];
  unsigned char digest[20];
  size_t klen;
  c->hbuf[c->hlen] = 0;
  endh = strstr(c->hbuf, "\r\n\r\n");
  if (!endh)
    return c->hlen >= sizeof c->hbuf - 1 ? -1 : 0;
  if (strncmp(c->hbuf, "HTTP/1.1 101", 12))
    return -1;
  klen = (size_t)snprintf(want, sizeof want, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", c->key);
  sha1((unsigned char *)want, klen, digest);
  base64(digest, 20, expect);
  for (p = c->hbuf; p < endh; p++) {
    if ((p == c->hbuf || p[-1] == '\n') && !strncasecmp(p, "sec-websocket-accept:", 21)) {
      char *v = p + 21;
      while (*v == ' ' || *v == '\t')
        v++;
      if (strncmp(v, expect, strlen(expect)))
        return -1;
      return (long)(endh + 4 - c->hbuf);
    }
  }
  return -1;
}

/* The server ended TCP (or reading failed). */
static void on_eof(conn *c) {
  if (c->state == S_HANDSHAKE || c->state == S_TLS) {
    handshake_failed(c, c->state == S_TLS ? "connection closed during the TLS handshake"
                                          : "connection closed during the handshake");
    return;
  }
  if (c->role != R_CHURN && !finished && c->role != R_IDLE)
    errors++;
  if (c->role == R_CHURN && !finished) {
    churn_cycles++;
    if (churn_cycle_done(c) < 0)
      return;
  }
  conn_close(c);
}

/* Handles n bytes the server sent (decrypted, under TLS): the 101 response,
 * then frames. */
static void on_data(conn *c, const unsigned char *p, size_t n) {
  int to_send = 0;
  uint64_t now;
  if (c->state == S_HANDSHAKE) {
    size_t take = sizeof c->hbuf - 1 - c->hlen;
    long used;
    if (take > n)
      take = n;
    memcpy(c->hbuf + c->hlen, p, take);
    c->hlen += take;
    used = parse_handshake(c);
    if (used < 0) {
      handshake_failed(c, "the server refused the upgrade or answered wrongly");
      return;
    }
    if (used == 0)
      return;
    /* bytes after the response already belong to frames */
    {
      size_t before = c->hlen - take; /* bytes of hbuf from earlier reads */
      size_t consumed_now = (size_t)used - before;
      p += consumed_now;
      n -= consumed_now;
    }
    c->state = S_OPEN;
    opening--;
    open_count++;
    if (opt.mode == M_CHURN)
      record_latency(uv_hrtime() - c->t_connect); /* connect() to the 101 read */
    conn_opened(c);
    if (c->state != S_OPEN)
      return;
  }
  if (c->state != S_OPEN && c->role != R_CHURN)
    return;
  now = uv_hrtime();
  if (feed(c, p, n, now, &to_send) < 0)
    return;
  if (to_send)
    send_frames(c, to_send);
}

static void send_upgrade(conn *c);

/* OpenSSL's reason for the last failure on this thread, for a message. */
static const char *tls_reason(void) {
  static char buf[256];
  unsigned long e = ERR_get_error();
  if (!e)
    return "no reason given";
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

static unsigned char plainbuf[256 * 1024];

/* TLS: feeds n bytes read from the socket to OpenSSL; drives the TLS
 * handshake (then sends the HTTP upgrade), and hands what decrypts to
 * on_data. */
static void tls_input(conn *c, const unsigned char *p, size_t n) {
  char why[320];
  if (BIO_write(SSL_get_rbio(c->ssl), p, (int)n) != (int)n)
    die("BIO_write of %zu bytes failed", n);
  if (c->state == S_TLS) {
    int r = SSL_do_handshake(c->ssl);
    if (tls_flush(c) < 0) {
      handshake_failed(c, "write failed during the TLS handshake");
      return;
    }
    if (r != 1) {
      if (SSL_get_error(c->ssl, r) == SSL_ERROR_WANT_READ)
        return;
      snprintf(why, sizeof why, "TLS handshake failed: %s", tls_reason());
      handshake_failed(c, why);
      return;
    }
    send_upgrade(c);
  }
  while (c->state == S_HANDSHAKE || c->state == S_OPEN) {
    int r = SSL_read(c->ssl, plainbuf, (int)sizeof plainbuf), e;
    if (r > 0) {
      on_data(c, plainbuf, (size_t)r);
      continue;
    }
    e = SSL_get_error(c->ssl, r);
    if (tls_flush(c) < 0 && e == SSL_ERROR_WANT_READ)
      e = SSL_ERROR_SSL;
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_ZERO_RETURN)
      return; /* more to come; or close_notify, and the TCP EOF follows */
    if (c->state == S_HANDSHAKE) {
      snprintf(why, sizeof why, "TLS error: %s", tls_reason());
      handshake_failed(c, why);
      return;
    }
    if (!finished && c->role != R_CHURN)
      errors++;
    conn_close(c);
    return;
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn *c = (conn *)s->data;
  if (nread < 0) {
    on_eof(c);
    return;
  }
  if (nread == 0)
    return;
  if (c->ssl)
    tls_input(c, (const unsigned char *)buf->base, (size_t)nread);
  else
    on_data(c, (const unsigned char *)buf->base, (size_t)nread);
}

static void on_connect(uv_connect_t *req, int status) {
  conn *c = (conn *)req->data;
  if (status < 0) {
    char why[128];
    snprintf(why, sizeof why, "connect: %s", uv_strerror(status));
    handshake_failed(c, why);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
  if (!opt.tls) {
    send_upgrade(c);
    return;
  }
  /* A fresh session each time (no resumption): every connection pays for a
   * full handshake. */
  c->ssl = SSL_new(tls_ctx);
  if (!c->ssl)
    die("SSL_new: %s", tls_reason());
  SSL_set_bio(c->ssl, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
  SSL_set_connect_state(c->ssl);
  {
    struct in_addr a4;
    if (inet_pton(AF_INET, opt.tls_host, &a4) != 1)
      SSL_set_tlsext_host_name(c->ssl, opt.tls_host); /* SNI: names, not addresses */
  }
  if (!opt.no_verify && !SSL_set1_host(c->ssl, opt.tls_host))
    die("SSL_set1_host failed");
  c->state = S_TLS;
  SSL_do_handshake(c->ssl); /* writes the ClientHello into the BIO */
  if (tls_flush(c) < 0)
    handshake_failed(c, "write failed");
}

/* Sends the HTTP upgrade request (over TLS once it is up). */
static void send_upgrade(conn *c) {
  char reqbuf[512];
  unsigned char k[16], *owned;
  uint64_t r1 = rnd(), r2 = rnd();
  uv_buf_t b;
  int len;
  memcpy(k, &r1, 8);
  memcpy(k + 8, &r2, 8);
  base64(k, 16, c->key);
  len = snprintf(reqbuf, sizeof reqbuf,
                 "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                 eps[c->ep].path, eps[c->ep].tls_host, eps[c->ep].port, c->key);
  c->state = S_HANDSHAKE;
  c->hlen = 0;
  owned = malloc((size_t)len);
  if (!owned)
    die("out of memory");
  memcpy(owned, reqbuf, (size_t)len);
  b = uv_buf_init((char *)owned, (unsigned)len);
  if (conn_write(c, &b, 1, owned) < 0)
    handshake_failed(c, "write failed");
}

static void start_conn(conn *c) {
  struct sockaddr_in addr;
  memset(&c->tcp, 0, sizeof c->tcp);
  c->state = S_CONNECTING;
  c->fhneed = 2;
  c->fhlen = 0;
  c->remaining = 0;
  c->msglen = 0;
  c->got_close = 0;
  c->ts_head = c->ts_count = 0;
  c->t_connect = uv_hrtime();
  uv_tcp_init(loop, &c->tcp);
  c->tcp.data = c;
  c->creq.data = c;
  uv_ip4_addr(eps[c->ep].host, eps[c->ep].port, &addr);
  opening++;
  if (uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&addr, on_connect) != 0) {
    opening--;
    failed_count++;
    uv_close((uv_handle_t *)&c->tcp, NULL);
    c->state = S_DONE;
  }
}

/* Opens connections (bounded number at once) until every slot is open. */
static void open_more(void) {
  while (next_to_open < n_to_open && opening < opt.connect_parallel) {
    conn *c = &conns[next_to_open++];
    start_conn(c);
  }
}

/* ---- phases --------------------------------------------------------------- */

static void begin_measure(void) {
  measuring = 1;
  m_t0 = uv_hrtime();
  m_cpu0 = self_cpu();
  m_scpu0 = proc_cpu(opt.server_pid);
  m_msgs0 = total_msgs;
  m_bytes0 = total_bytes;
  churn_c0 = churn_cycles;
  rss_before = proc_status_kb(opt.server_pid, "VmRSS");
  rss_max = rss_before;
  lat_n = 0;
}

static void emit_common(double secs) {
  double ccpu = self_cpu() - m_cpu0;
  double scpu = proc_cpu(opt.server_pid);
  printf("\"seconds\":%.3f,\"client_cpu_s\":%.3f", secs, ccpu);
  if (opt.server_pid > 0 && scpu >= 0 && m_scpu0 >= 0)
    printf(",\"server_cpu_s\":%.3f,\"server_cpu_pct\":%.1f", scpu - m_scpu0,
           secs > 0 ? 100.0 * (scpu - m_scpu0) / secs : 0.0);
  if (opt.server_pid > 0) {
    printf(",\"server_rss_kb\":%ld,\"server_hwm_kb\":%ld", proc_status_kb(opt.server_pid, "VmRSS"),
           proc_status_kb(opt.server_pid, "VmHWM"));
  }
  printf(",\"conns_open\":%d,\"conns_failed\":%d,\"errors\":%lld", open_count, failed_count, errors);
}

static void report_and_exit(void) {
  uint64_t t1 = uv_hrtime();
  double secs = (double)(t1 - m_t0) / 1e9;
  long long msgs = total_msgs - m_msgs0;
  static const char *names[] = {"echo", "idle", "churn", "broadcast-recv"};
  if (!measuring) {
    m_t0 = t_start;
    secs = (double)(t1 - m_t0) / 1e9;
  }
  qsort(lat, lat_n, sizeof *lat, cmp_u32);
  printf("{\"mode\":\"%s\",\"conns\":%d,\"inflight\":%d,\"size\":%zu,", names[opt.mode], opt.conns,
         opt.inflight, opt.size);
  switch (opt.mode) {
  case M_ECHO:
    printf("\"msgs\":%lld,\"msgs_per_s\":%.1f,\"mb_per_s\":%.2f,\"lat_p50_us\":%.1f,"
           "\"lat_p99_us\":%.1f,\"lat_max_us\":%.1f,",
           msgs, secs > 0 ? (double)msgs / secs : 0, secs > 0 ? (double)(total_bytes - m_bytes0) / secs / 1e6 : 0,
           pct(0.5), pct(0.99), lat_n ? lat[lat_n - 1] / 1000.0 : 0);
    if (opt.count > 0)
      printf("\"count\":%lld,", opt.count);
    break;
  case M_BCAST:
    printf("\"receivers\":%d,\"deliveries\":%lld,\"deliveries_per_s\":%.1f,\"broadcasts\":%lld,"
           "\"broadcasts_per_s\":%.1f,\"fanout_p50_us\":%.1f,\"fanout_p99_us\":%.1f,\"fanout_max_us\":%.1f,",
           n_recv, msgs, secs > 0 ? (double)msgs / secs : 0, (long long)lat_n,
           secs > 0 ? (double)lat_n / secs : 0, pct(0.5), pct(0.99), lat_n ? lat[lat_n - 1] / 1000.0 : 0);
    break;
  case M_CHURN: {
    long long cyc = churn_cycles - churn_c0;
    rss_after = proc_status_kb(opt.server_pid, "VmRSS");
    printf("\"cycles\":%lld,\"cycles_per_s\":%.1f,\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,"
           "\"rss_max_kb\":%ld,\"rss_trace_kb\":[%.*s],\"opens\":%zu,\"open_p50_us\":%.1f,"
           "\"open_p99_us\":%.1f,",
           cyc, secs > 0 ? (double)cyc / secs : 0, rss_before, rss_after, rss_max, (int)rss_trace_len,
           rss_trace, lat_n, pct(0.5), pct(0.99));
    break;
  }
  default:
    break;
  }
  emit_common(secs);
  printf("}\n");
  fflush(stdout);
  _exit(0); /* no teardown: the server sees the connections drop */
}

static void finish(void) {
  if (finished)
    return;
  finished = 1;
  report_and_exit();
}

static void on_phase_end(uv_timer_t *t) {
  (void)t;
  finish();
}

static void on_warm(uv_timer_t *t) {
  begin_measure();
  if (opt.mode == M_CHURN && opt.count > 0)
    return; /* ends after --count cycles */
  uv_timer_start(t, on_phase_end, (uint64_t)(opt.duration * 1000), 0);
}

static void start_phases(void) {
  if (opt.count > 0 && opt.mode == M_ECHO) {
    begin_measure();
    return;
  }
  uv_timer_init(loop, &phase_timer);
  if (opt.warmup > 0)
    uv_timer_start(&phase_timer, on_warm, (uint64_t)(opt.warmup * 1000), 0);
  else
    on_warm(&phase_timer);
}

/* idle mode */
static long idle_rss0 = -1;
static uv_timer_t idle_timer;
static uint64_t idle_t_open;

static void idle_done(uv_timer_t *t) {
  long rss1 = proc_status_kb(opt.server_pid, "VmRSS");
  double per = open_count > 0 && rss1 >= 0 && idle_rss0 >= 0 ? (double)(rss1 - idle_rss0) * 1024.0 / open_count : 0;
  (void)t;
  printf("{\"mode\":\"idle\",\"conns\":%d,\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,"
         "\"bytes_per_conn\":%.0f,\"connect_s\":%.3f,",
         opt.conns, idle_rss0, rss1, per, (double)(idle_t_open - t_start) / 1e9);
  measuring = 1;
  m_t0 = t_start;
  m_cpu0 = 0;
  m_scpu0 = -1;
  emit_common((double)(uv_hrtime() - t_start) / 1e9);
  printf("}\n");
  fflush(stdout);
  _exit(0);
}

/* churn: send our close frame right after the upgrade */
static int churn_cycle_done(conn *c) {
  (void)c;
  if (measuring && opt.server_pid > 0 && churn_cycles % 1000 == 0) {
    long r = proc_status_kb(opt.server_pid, "VmRSS");
    if (r > rss_max)
      rss_max = r;
    if (rss_trace_len < sizeof rss_trace - 32)
      rss_trace_len += (size_t)snprintf(rss_trace + rss_trace_len, sizeof rss_trace - rss_trace_len,
                                        "%s%ld", rss_trace_len ? "," : "", r);
  }
  if (measuring && opt.count > 0 && churn_cycles - churn_c0 >= opt.count) {
    finish();
    return -1;
  }
  return 0;
}

static void churn_deadline(uv_timer_t *t) {
  conn *c = (conn *)t->data;
  /* the server did not end TCP in time: count the cycle, close ourselves */
  c->timer_on = 0;
  if (c->state == S_OPEN || c->state == S_HANDSHAKE) {
    errors++;
    churn_cycles++;
    if (churn_cycle_done(c) < 0)
      return;
    conn_close(c);
  }
}

static int all_open_reported;

/* Called after every connect-phase success or failure: opens more, and
 * starts the mode once every slot of the phase has an outcome. */
static void connect_progress(void) {
  int i;
  open_more();
  if (all_open_reported || open_count + failed_count < n_to_open)
    return;
  all_open_reported = 1;
  switch (opt.mode) {
  case M_ECHO:
    if (open_count == 0)
      die("no connection could be opened");
    for (i = 0; i < n_to_open; i++)
      if (conns[i].state == S_OPEN) {
        int k = opt.inflight;
        if (opt.count > 0 && total_sent + k > opt.count)
          k = (int)(opt.count - total_sent);
        send_frames(&conns[i], k);
      }
    start_phases();
    break;
  case M_IDLE:
    idle_t_open = uv_hrtime();
    uv_timer_init(loop, &idle_timer);
    uv_timer_start(&idle_timer, idle_done, (uint64_t)(opt.duration * 1000), 0);
    break;
  case M_BCAST:
    if (failed_count > 0)
      die("%d receiving connections failed", failed_count);
    start_conn(sender); /* every receiver is open: the sender last */
    break;
  default:
    break;
  }
}

static void conn_opened(conn *c) {
  switch (opt.mode) {
  case M_CHURN: {
    unsigned char code[2] = {0x03, 0xe8}; /* 1000 */
    send_control(c, 8, code, 2);
    if (!c->timer_on) {
      uv_timer_start(&c->timer, churn_deadline, 2000, 0);
      c->timer_on = 1;
    }
    break;
  }
  case M_BCAST:
    if (c->role == R_SEND) {
      int k;
      b_last_progress = uv_hrtime();
      for (k = 0; k < opt.inflight; k++) {
        b_ts[(b_sent + 1) % b_ring] = uv_hrtime();
        b_sent++;
        send_frames(c, 1);
      }
      start_phases();
      break;
    }
    connect_progress();
    break;
  default:
    connect_progress();
    break;
  }
}

/* churn: in on_read, EOF after our close finishes the cycle (see above);
 * the timer guards a server that never closes. */

static uv_timer_t stall_timer;
static void stall_check(uv_timer_t *t) {
  (void)t;
  if (opt.mode == M_BCAST && sender && sender->state == S_OPEN && b_last_progress &&
      uv_hrtime() - b_last_progress > 5000000000ull) {
    fprintf(stderr, "loadgen: broadcast stalled (%lld of %lld complete)\n", b_completed, b_sent);
    errors++;
    finish();
  }
}

static void usage(void) {
  fprintf(stderr,
          "usage: loadgen --url ws[s]://127.0.0.1:PORT/ [--mode echo|idle|churn|broadcast-recv]\n"
          "               [--conns N] [--inflight K] [--size BYTES] [--duration S] [--warmup S]\n"
          "               [--count M] [--server-pid PID] [--binary] [--settle S] [--parallel N]\n"
          "               [--ca FILE | --no-verify]   (wss://)\n");
  exit(2);
}

static void parse_url(const char *url, endpoint *ep) {
  const char *p = url, *slash, *colon;
  size_t hl;
  if (!strncmp(p, "wss://", 6)) {
    opt.tls = 1;
    p += 6;
  } else if (!strncmp(p, "ws://", 5)) {
    p += 5;
  } else {
    die("only ws:// and wss:// URLs are supported: %s", url);
  }
  slash = strchr(p, '/');
  if (!slash)
    slash = p + strlen(p);
  colon = memchr(p, ':', (size_t)(slash - p));
  if (!colon)
    die("the URL needs a port: %s", url);
  hl = (size_t)(colon - p);
  if (hl >= sizeof ep->host)
    die("host too long");
  memcpy(ep->host, p, hl);
  ep->host[hl] = 0;
  memcpy(ep->tls_host, p, hl);
  ep->tls_host[hl] = 0;
  if (!strcmp(ep->host, "localhost"))
    strcpy(ep->host, "127.0.0.1");
  ep->port = atoi(colon + 1);
  snprintf(ep->path, sizeof ep->path, "%s", *slash ? slash : "/");
}

int main(int argc, char **argv) {
  int i;
  struct rlimit rl;
  const char *url = NULL, *recv_urls = NULL, *pids = NULL;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED() do { if (!v) usage(); i++; } while (0)
    if (!strcmp(a, "--url")) { NEED(); url = v; }
    else if (!strcmp(a, "--conns")) { NEED(); opt.conns = atoi(v); }
    else if (!strcmp(a, "--inflight")) { NEED(); opt.inflight = atoi(v); }
    else if (!strcmp(a, "--size")) { NEED(); opt.size = (size_t)strtoull(v, NULL, 10); }
    else if (!strcmp(a, "--duration")) { NEED(); opt.duration = atof(v); }
    else if (!strcmp(a, "--warmup")) { NEED(); opt.warmup = atof(v); }
    else if (!strcmp(a, "--count")) { NEED(); opt.count = atoll(v); }
    else if (!strcmp(a, "--server-pid")) { NEED(); opt.server_pid = atoi(v); }
    else if (!strcmp(a, "--settle")) { NEED(); opt.settle = atof(v); }
    else if (!strcmp(a, "--parallel")) { NEED(); opt.connect_parallel = atoi(v); }
    else if (!strcmp(a, "--binary")) opt.binary = 1;
    else if (!strcmp(a, "--ca")) { NEED(); opt.ca = v; }
    else if (!strcmp(a, "--no-verify")) opt.no_verify = 1;
    else if (!strcmp(a, "--recv-urls")) { NEED(); recv_urls = v; }
    else if (!strcmp(a, "--recv-size")) { NEED(); recv_size = (size_t)strtoull(v, NULL, 10); }
    else if (!strcmp(a, "--server-pids")) { NEED(); pids = v; }
    else if (!strcmp(a, "--mode")) {
      NEED();
      if (!strcmp(v, "echo")) opt.mode = M_ECHO;
      else if (!strcmp(v, "idle")) opt.mode = M_IDLE;
      else if (!strcmp(v, "churn")) opt.mode = M_CHURN;
      else if (!strcmp(v, "broadcast-recv")) opt.mode = M_BCAST;
      else usage();
    } else usage();
#undef NEED
  }
  if (!url || opt.conns < 1 || opt.inflight < 1 || opt.connect_parallel < 1)
    usage();
  parse_url(url, &eps[0]);
  /* opt keeps the first endpoint's host for TLS (SNI and the name checked) */
  snprintf(opt.host, sizeof opt.host, "%s", eps[0].host);
  snprintf(opt.tls_host, sizeof opt.tls_host, "%s", eps[0].tls_host);
  opt.port = eps[0].port;
  snprintf(opt.path, sizeof opt.path, "%s", eps[0].path);
  if (recv_urls) {
    char buf[4096], *tok, *save = NULL;
    snprintf(buf, sizeof buf, "%s", recv_urls);
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
      if (n_eps >= MAX_EPS)
        die("at most %d --recv-urls", MAX_EPS - 1);
      parse_url(tok, &eps[n_eps++]);
    }
  }
  if (pids) {
    char buf[1024], *tok, *save = NULL;
    snprintf(buf, sizeof buf, "%s", pids);
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
      if (n_server_pids >= (int)(sizeof server_pids / sizeof server_pids[0]))
        die("too many --server-pids");
      server_pids[n_server_pids++] = atoi(tok);
    }
    if (!opt.server_pid)
      opt.server_pid = server_pids[0];
  }
  if (opt.tls) {
    if (!opt.ca && !opt.no_verify)
      die("wss:// needs --ca FILE (the CA that signed the server's certificate) or --no-verify");
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx)
      die("SSL_CTX_new: %s", tls_reason());
    /* no session cache: every connection makes a full handshake */
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(tls_ctx, SSL_OP_NO_TICKET);
    if (opt.no_verify) {
      SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL);
    } else {
      if (SSL_CTX_load_verify_locations(tls_ctx, opt.ca, NULL) != 1)
        die("cannot load the CA file %s: %s", opt.ca, tls_reason());
      SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
    }
  }

  /* as many descriptors as allowed */
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  rng_state ^= uv_hrtime() ^ ((uint64_t)getpid() << 32);
  loop = uv_default_loop();
  t_start = uv_hrtime();

  payload = malloc(opt.size + 1);
  if (!payload)
    die("out of memory");
  for (i = 0; (size_t)i < opt.size; i++)
    payload[i] = (unsigned char)('a' + i % 26);

  nconns = opt.conns + (opt.mode == M_BCAST ? 1 : 0);
  conns = calloc((size_t)nconns, sizeof *conns);
  if (!conns)
    die("out of memory");
  for (i = 0; i < nconns; i++) {
    conn *c = &conns[i];
    c->idx = i;
    c->role = opt.mode == M_ECHO ? R_ECHO : opt.mode == M_IDLE ? R_IDLE : opt.mode == M_CHURN ? R_CHURN : R_RECV;
    if (opt.mode == M_BCAST && i == nconns - 1)
      c->role = R_SEND;
    c->ep = c->role == R_RECV && n_eps > 1 ? 1 + i % (n_eps - 1) : 0;
    if (c->role == R_ECHO || c->role == R_SEND) {
      c->mask = (uint32_t)rnd();
      c->frame = build_frame(opt.binary ? 2 : 1, payload, opt.size, c->mask, &c->framelen);
    }
    if (c->role == R_ECHO) {
      c->ts = calloc((size_t)opt.inflight, sizeof *c->ts);
      if (!c->ts)
        die("out of memory");
    }
    if (opt.mode == M_CHURN) {
      uv_timer_init(loop, &c->timer);
      c->timer.data = c;
    }
  }

  switch (opt.mode) {
  case M_ECHO:
  case M_IDLE:
    if (opt.mode == M_IDLE)
      idle_rss0 = proc_status_kb(opt.server_pid, "VmRSS");
    n_to_open = nconns;
    open_more();
    break;
  case M_BCAST:
    n_recv = opt.conns;
    sender = &conns[nconns - 1];
    b_ring = opt.inflight + 2;
    b_level = calloc((size_t)b_ring, sizeof *b_level);
    b_ts = calloc((size_t)b_ring, sizeof *b_ts);
    if (!b_level || !b_ts)
      die("out of memory");
    n_to_open = n_recv; /* the receivers; the sender follows */
    open_more();
    uv_timer_init(loop, &stall_timer);
    uv_timer_start(&stall_timer, stall_check, 1000, 1000);
    uv_unref((uv_handle_t *)&stall_timer);
    break;
  case M_CHURN:
    for (i = 0; i < nconns; i++)
      start_conn(&conns[i]);
    start_phases();
    break;
  }
  uv_run(loop, UV_RUN_DEFAULT);
  /* the loop ran dry: every connection failed or closed */
  if (!finished) {
    fprintf(stderr, "loadgen: no connection left (%d open, %d failed)\n", open_count, failed_count);
    finish();
  }
  return 1;
}
