/*
 * relaynet core: internal declarations shared by the C files of relaynet.core.
 *
 * Threading and re-entrancy contract: everything here runs on the thread that
 * owns the Lua state. libwebsockets callbacks (rn_server.c, rn_client.c) never
 * call into Lua: they only update C state and append events to the loop's
 * event queue (rn__event_push). Lua sees those events when rn_loop.c drains
 * the queue after uv_run() has returned, so a Lua error can never unwind
 * through libuv or libwebsockets.
 */
#ifndef RN_H
#define RN_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <uv.h>
#include <libwebsockets.h>

#define RN_SERVER_MT "relaynet.server"
#define RN_CONN_MT "relaynet.conn"
#define RN_REQ_MT "relaynet.request"

/* lws 4.1 keeps the close opcode (4) out of its public enum; lws_write still
 * frames it, which is how relaynet sends close frames with its own codes. */
#define RN_WRITE_CLOSE ((enum lws_write_protocol)4)

/* The kinds of event delivered to the Lua dispatcher (rn_loop.c), listed
 * once: X(NAME, what the event carries). The list makes the enum (RN_EV_NAME)
 * and the Lua constants (core.EV_NAME, rn_module.c). */
#define RN_EVENT_KINDS(X)                                                      \
  X(HTTP, "a complete HTTP request: req")                                      \
  X(OPEN, "a WebSocket is established: conn")                                  \
  X(MESSAGE, "a whole message: conn, data/len, flag = binary")                 \
  X(CLOSE, "a WebSocket is gone: conn, code, data = reason")                   \
  X(WRITTEN, "a queued message with a waiter was written: conn, ticket, flag") \
  X(DRAIN, "a send queue fell below its high-water mark: conn")                \
  X(CONNERR, "an outgoing connection failed: conn, data = message")            \
  X(SIGNAL, "SIGINT or SIGTERM: code = signal number")                         \
  X(RESOLVED, "a DNS lookup finished: ticket, data = address or error")

enum rn_event_type {
  RN_EV_NONE_ = 0,
#define RN__EV_ENUM(name, doc) RN_EV_##name,
  RN_EVENT_KINDS(RN__EV_ENUM)
#undef RN__EV_ENUM
  RN_EV_COUNT_
};

struct rn_conn;
struct rn_req;
struct rn_server;

typedef struct rn_event {
  int type;
  int code;
  int flag;
  struct rn_conn *conn; /* holds a reference while queued */
  struct rn_req *req;   /* holds a reference while queued */
  uint64_t ticket;
  char *data; /* malloc'd, owned by the event; NULL when in_arena */
  size_t len;
  size_t off;   /* in_arena: where the payload starts in rn_loop.arena */
  int in_arena; /* the payload is in the loop's event arena (rn__arena_put) */
} rn_event;

/*
 * A refcounted outgoing message. buf holds LWS_PRE bytes of headroom and then
 * the payload. Server-side frames are never masked, so one message can sit in
 * many server connections' queues at once (broadcast); client connections mask
 * in place and therefore always get a private copy.
 */
typedef struct rn_msg {
  int refcnt;
  int binary;
  size_t len;
  unsigned char buf[];
} rn_msg;

typedef struct rn_qnode {
  struct rn_qnode *next;
  rn_msg *msg;
  uint64_t ticket; /* nonzero: emit RN_EV_WRITTEN when written */
} rn_qnode;

/* Per-server limits; every field is configurable from Lua. */
typedef struct rn_limits {
  size_t max_message;     /* largest reassembled WS message (close 1009) */
  size_t max_body;        /* largest HTTP request body (413) */
  size_t send_queue;      /* bytes a connection may have queued (EQUEUEFULL) */
  size_t send_high_water; /* ws_send_async waits above this */
  double slow_timeout;    /* seconds above high water before close 1008 */
  int max_connections;    /* open WebSockets per server (503 past it) */
  int ping_interval;      /* seconds idle before lws sends a ping */
  int pong_timeout;       /* seconds idle before lws hangs up */
  size_t rx_buffer;       /* lws per-connection receive buffer */
  /* Hostile-input bounds (issue 8). A value of 0 switches a bound off. */
  double body_timeout;    /* seconds from the headers to the last body byte (408) */
  size_t body_min_rate;   /* bytes/s a body must average after RN_BODY_GRACE_MS (408) */
  int max_connections_per_ip; /* TCP connections per source address (IPv6: per /64) */
  size_t ws_msg_rate;     /* WS messages/s per server connection (close 1008) */
  size_t ws_msg_burst;    /* ... token bucket size, in messages */
  size_t ws_byte_rate;    /* WS bytes/s per server connection (close 1008) */
  size_t ws_byte_burst;   /* ... token bucket size, in bytes (at least max_message) */
  size_t max_buffered;    /* bytes a server may hold for its peers (rn_server.buffered) */
} rn_limits;

/* While a server is over max_buffered, a message that would be written at
 * once (nothing queued) is still sent when it is at most this long: lws may
 * keep an unsent tail of it, so each connection can exceed the budget by at
 * most this much. Larger ones are refused like queued ones. */
#define RN_BUDGET_DIRECT_MAX 16384

/* The body rate is only checked once a body has had this long to start. */
#define RN_BODY_GRACE_MS 5000

/* Counters of refusals by the bounds above (core.stats(), server:stats()).
 * Every field is a count of events since the server (or the process, for
 * the loop-wide totals) started. */
typedef struct rn_counters {
  uint64_t conn_refused_per_ip;  /* TCP connections closed at accept: per-address limit */
  uint64_t http_body_timeouts;   /* 408: body deadline or minimum rate */
  uint64_t http_body_too_large;  /* 413: body over max_body */
  uint64_t ws_refused_full;      /* 503 upgrades: max_connections */
  uint64_t ws_rate_closes;       /* 1008 closes: message or byte rate */
  uint64_t ws_too_big;           /* 1009 closes: max_message */
  uint64_t ws_slow_closes;       /* 1008 closes: slow consumer */
  uint64_t protected_refused;    /* 403: a mesh route asked by a non-loopback peer */
  uint64_t token_refused;        /* 401: a token path asked without the bearer token */
  uint64_t buffer_send_refusals; /* EQUEUEFULL (or a broadcast skipped): max_buffered */
  uint64_t buffer_rx_closes;     /* 1008 closes: a reassembly buffer past max_buffered */
  uint64_t buffer_body_refusals; /* 503: a request body buffer past max_buffered */
  uint64_t buffer_evictions;     /* 1008 "slow consumer" closes to make room in max_buffered */
} rn_counters;

/* WebSocket traffic: whole messages and their payload bytes, received
 * (handed to Lua) and sent (written to lws). Kept per connection, per
 * server and per loop (core.traffic(), server:stats(), conn:info()). */
typedef struct rn_traffic {
  uint64_t msgs_in, msgs_out, bytes_in, bytes_out;
} rn_traffic;

/* One source address's share of a server's connections (rn_server.c). */
typedef struct rn_ipent {
  struct rn_ipent *next;
  unsigned char addr[16]; /* IPv6, or IPv4-mapped; IPv6 keeps only its /64 */
  int count;
} rn_ipent;
#define RN_IP_BUCKETS 1024

/* Client vhosts a loop may hold: one per CA file, plus the default. */
#define RN_CLIENT_VHOSTS 8

/* The per-Lua-state loop context: one uv loop and one lws context. */
typedef struct rn_loop {
  uv_loop_t loop;
  struct lws_context *ctx;
  /* Client vhosts (rn_client.c), made on first use: [0] plain and TLS
   * verified against the system's CA store, then one per CA file named by
   * a connect (at most RN_CLIENT_VHOSTS). */
  struct lws_vhost *client_vh[RN_CLIENT_VHOSTS];
  char *client_ca[RN_CLIENT_VHOSTS]; /* [0] is NULL */
  int nclient_vh;
  uv_timer_t poll_timer; /* wakes uv_run for the Lua scheduler's next timer */
  uv_timer_t sweep_timer; /* one-second sweep: slow consumers */
  uv_signal_t sig_int, sig_term;
  int handles_open; /* our own uv handles not yet closed */
  int running;      /* the loop is set up (rn__loop_start done) */
  rn_event *ev;     /* ring buffer of pending events */
  size_t ev_head, ev_count, ev_cap;
  unsigned char *scratch; /* LWS_PRE + payload for direct writes */
  size_t scratch_cap;
  unsigned char *arena;   /* payloads of queued message events (rn__arena_put) */
  size_t arena_len, arena_cap;
  rn_event cur;           /* the event dispatch is running for */
  int cur_set;            /* cur holds references to release */
  int dispatching;        /* inside core.poll's dispatch calls */
  uint64_t poll_due;      /* uv time poll_timer is set for */
  uint64_t next_conn_id;
  uint64_t next_ticket;
  struct rn_conn *conns; /* every live connection (server and client) */
  struct rn_server *servers;
  lws_retry_bo_t client_retry;
  int oom; /* an allocation failed inside a callback */
  struct rn_req *body_reqs; /* requests whose body is still arriving */
  rn_counters counters;     /* totals over every server of this process */
  rn_traffic traffic;       /* totals over every connection of this process */
} rn_loop;

typedef struct rn_server {
  struct rn_server *next;
  rn_loop *L;
  struct lws_vhost *vh;
  struct lws_protocols protocols[2];
  lws_retry_bo_t retry;
  rn_limits lim;
  int port;
  int websocket;      /* WebSocket upgrades allowed */
  int nconns;         /* established WebSockets */
  int closed;         /* server:close() was called */
  int finalized;      /* lws has freed the vhost */
  char **origins;     /* NULL: allow every Origin */
  int norigins;
  char **protected_paths; /* exact paths served to loopback peers only (rn_protect.c) */
  int nprotected;
  char **token_paths;     /* exact paths that need the bearer token (rn_protect.c) */
  int ntoken_paths;
  char *token;            /* "Bearer <token>", or NULL */
  size_t token_len;
  int ws_listed_only;     /* upgrades only on ws_paths until server:ws_accept_any() */
  char **ws_paths;        /* exact paths with a WebSocket endpoint (rn_protect.c) */
  int nws_paths;
  int refcnt;         /* Lua box + live connections/requests */
  int owner_ref;      /* registry ref of the Lua value set by server:set_owner(),
                       * pushed with OPEN and HTTP events; LUA_NOREF: none */
  char *host;
  char *tls_cert, *tls_key, *tls_ca; /* TLS files (NULL: plain HTTP/WS) */
  int tls_require_client_cert;
  rn_ipent **ips;     /* RN_IP_BUCKETS chains, allocated on first accept */
  int nips_conns;     /* connections counted in ips (each holds a server ref) */
  /* Bytes this server holds for its peers, bounded by lim.max_buffered: its
   * WebSocket connections' queued bytes (qbytes), writes lws holds in part
   * (txpart) and allocated reassembly buffers (rxcap), and its requests'
   * allocated body buffers (body_cap, until Lua takes the body). Changed
   * only through rn__buffered_add / rn__buffered_sub. */
  size_t buffered;
  size_t buffered_peak;   /* highest buffered since the last trim (rn_loop.c sweep) */
  uint64_t evict_scan_at; /* uv_now() of the last eviction scan (one per loop turn) */
  rn_counters counters;
  rn_traffic traffic;
} rn_server;

enum rn_conn_state { RN_CS_CONNECTING, RN_CS_OPEN, RN_CS_CLOSING, RN_CS_CLOSED };

/* What only an outgoing (client) connection needs; server connections use
 * their server's limits and carry none of it. */
typedef struct rn_client_opts {
  rn_limits lim;
  lws_retry_bo_t retry;
  char *path, *host, *origin, *address, *protocol;
  int port;
  char cert_error[96]; /* why the server's certificate was refused ("": it was not) */
} rn_client_opts;

/* One WebSocket connection. Kept small: an idle server connection costs
 * this struct, its path and lws's own state, nothing else. */
typedef struct rn_conn {
  struct rn_conn *next, *prev; /* in rn_loop.conns */
  rn_loop *L;
  rn_server *srv;    /* NULL for client connections */
  struct lws *wsi;   /* NULL once lws has closed it */
  rn_client_opts *cl; /* client connections only */
  uint64_t id;
  int refcnt;        /* lws side + Lua box + queued events */
  uint8_t state;     /* enum rn_conn_state */
  uint8_t client;
  uint8_t opened;    /* RN_EV_OPEN was emitted */
  uint8_t internal;  /* a mesh or RPC link: never part of a broadcast */
  uint8_t want_drain; /* emit RN_EV_DRAIN when qbytes falls below high water */
  uint8_t rx_binary;
  uint8_t rx_active; /* a fragmented message is being reassembled */
  uint8_t rx_split;  /* ... and a frame of it ended before its last one: a
                      * control frame (a ping) may have come in between */
  uint8_t tx_defer;  /* write nothing at once until the next WRITEABLE
                      * callback: lws may hold a pong that must go first */
  uint8_t rx_held;   /* server side: reading paused while lws holds part of a
                      * write (rn__rx_hold); counts the sweeps since */
  uint8_t close_sent;
  uint8_t rate_scale; /* receive rates and bursts times this (0 counts as 1; set_rate_scale) */
  /* receive rate token buckets (server connections; see rn__conn_receive) */
  double rl_msgs, rl_bytes;
  uint64_t rl_at;     /* uv_now() of the last refill; 0: buckets not started */
  rn_qnode *qhead, *qtail;
  size_t qbytes;
  size_t txpart;      /* charged to max_buffered while lws holds part of a write
                       * (the whole message: lws does not say how much) */
  uint64_t over_since; /* uv_now() when qbytes first went over high water; 0: not over */
  /* receive side */
  unsigned char *rx;
  size_t rxlen, rxcap;
  size_t rx_valid;   /* bytes of rx known to be valid UTF-8 */
  /* close side: the reasons are allocated only once a close starts */
  int close_code;    /* code we send (when we initiate) */
  int peer_code;     /* code the peer sent, 1005 if none, 1006 if none at all */
  char *close_reason, *peer_reason; /* NULL: none */
  uint8_t close_reason_len, peer_reason_len;
  /* HTTP upgrade info captured at establish time */
  char *path;
  char peer[48];     /* the peer's address as text (an IPv6 address fits) */
  rn_traffic traffic;
} rn_conn;

/* Per-session data of the server protocol: a wsi is either an HTTP
 * connection (req set while a request is in flight) or a WebSocket. */
typedef struct rn_pss {
  struct rn_req *req;
  struct rn_conn *conn;
} rn_pss;

typedef struct rn_req {
  rn_loop *L;
  rn_server *srv;
  struct lws *wsi; /* NULL once the HTTP connection is gone */
  int refcnt;      /* lws side + Lua box + queued events */
  char method[16];
  char *uri;
  char *query;     /* decoded "k=v" arguments, each NUL-terminated, or NULL */
  size_t query_len;
  char *headers;   /* "name\0value\0"... for the standard headers */
  size_t headers_len;
  unsigned char *body; /* grows as bytes arrive, up to body_expect */
  size_t body_len, body_expect, body_cap;
  int body_refused; /* a limit answered already */
  int body_timed_out; /* the sweep found the body late: answer 408 when writeable */
  uint64_t body_start; /* uv_now() when the headers were complete */
  struct rn_req *bnext, *bprev; /* in rn_loop.body_reqs while the body arrives */
  int in_body_list;
  int ready;        /* RN_EV_HTTP was emitted */
  char peer[64];
  /* response */
  int responded;
  int status;
  char *resp_headers; /* "name\0value\0"... */
  size_t resp_headers_len;
  unsigned char *resp_body;
  size_t resp_len, resp_off;
  int headers_sent;
  int done;
} rn_req;

/* The server's buffered-bytes budget (max_buffered; see rn_server.buffered).
 * rn__buffered_fits: 1 when `more` bytes fit (or the budget is off). */
static inline int rn__buffered_fits(const rn_server *s, size_t more) {
  return !s->lim.max_buffered || (s->buffered <= s->lim.max_buffered &&
                                  more <= s->lim.max_buffered - s->buffered);
}
static inline void rn__buffered_add(rn_server *s, size_t n) {
  s->buffered += n;
  if (s->buffered > s->buffered_peak)
    s->buffered_peak = s->buffered;
}
/* Releasing more than was added would be an accounting bug. Built with
 * -DRN_CHECK_BUFFERED (implied by ASan: make test-asan, make fuzz) it
 * aborts, as an assertion would; otherwise the count stops at 0 (a server
 * must not die of it). The specs check that the count matches what is held
 * and returns to 0 once every connection is gone. */
#ifndef RN_CHECK_BUFFERED
#if defined(__SANITIZE_ADDRESS__)
#define RN_CHECK_BUFFERED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RN_CHECK_BUFFERED 1
#endif
#endif
#endif
static inline void rn__buffered_sub(rn_server *s, size_t n) {
#ifdef RN_CHECK_BUFFERED
  if (n > s->buffered)
    abort();
#endif
  s->buffered = n > s->buffered ? 0 : s->buffered - n;
}

/* The limits that apply to a connection: its server's, or its own for a
 * client connection. */
static inline const rn_limits *rn__conn_limits(const rn_conn *c) {
  return c->srv ? &c->srv->lim : &c->cl->lim;
}

/* Counts one whole message of `len` bytes received (in) or written (out)
 * on a connection, its server and its loop. */
static inline void rn__traffic_in(rn_conn *c, size_t len) {
  c->traffic.msgs_in++;
  c->traffic.bytes_in += len;
  c->L->traffic.msgs_in++;
  c->L->traffic.bytes_in += len;
  if (c->srv) {
    c->srv->traffic.msgs_in++;
    c->srv->traffic.bytes_in += len;
  }
}
static inline void rn__traffic_out(rn_conn *c, size_t len) {
  c->traffic.msgs_out++;
  c->traffic.bytes_out += len;
  c->L->traffic.msgs_out++;
  c->L->traffic.bytes_out += len;
  if (c->srv) {
    c->srv->traffic.msgs_out++;
    c->srv->traffic.bytes_out += len;
  }
}

/* Frees a connection's reassembly buffer and gives its bytes back to the
 * budget. */
static inline void rn__conn_rx_free(rn_conn *c) {
  if (c->srv)
    rn__buffered_sub(c->srv, c->rxcap);
  free(c->rx);
  c->rx = NULL;
  c->rxcap = c->rxlen = 0;
}

/* Whether a message may be written to c at once, without waiting for a
 * WRITEABLE callback: nothing is queued, lws holds no partial write, and no
 * pong lws may hold has to go first (tx_defer). */
static inline int rn__conn_direct(rn_conn *c) {
  return !c->qhead && !c->tx_defer && !lws_partial_buffered(c->wsi);
}

/* The files of the core, each one concept, and what each offers the others.
 * A file calls only files listed before it, with two kinds of exception:
 *  - the loop (rn_loop.c) drives the files after it (dispatch, the sweep,
 *    shutdown), and the Lua entry points of those files find their loop
 *    through rn__loop_get / rn__loop_ensure;
 *  - connections, requests and per-address entries hold a reference to
 *    their server and release it with rn__server_unref.
 * rn_module.c (luaopen_relaynet_core) is the top: it opens every file's
 * Lua functions. */

/* rn_error.c: pushes nil, "CODE: message", "CODE" and returns 3. */
int rn__fail(lua_State *L, const char *code, const char *fmt, ...);

/* rn_log.c: the time of a log line ("2026-12-03T00:49:29.123Z", written
 * into buf, returns its length), libwebsockets' log level and emitter set
 * from the relaynet.log level (called by rn_loop.c for every new context),
 * and core.log_level / core.log_stamp. */
size_t rn__log_stamp(char *buf, size_t cap);
void rn__log_lws_apply(void);
void rn__log_open_lua(lua_State *L);

/* rn_buf.c: growing buffers. */
int rn__grow(unsigned char **buf, size_t *cap, size_t need, size_t initial, size_t max);
size_t rn__grow_cap(size_t cap, size_t need, size_t initial, size_t max);

/* rn_utf8.c: 0: s is complete, valid UTF-8; > 0: valid but for an
 * incomplete sequence of that many bytes at the end; < 0: invalid. */
int rn__utf8_check(const unsigned char *s, size_t len);

/* rn_limits.c */
extern const rn_limits rn__default_limits;
void rn__limits_from_table(lua_State *L, int idx, rn_limits *lim);
int rn__limits_defaults(lua_State *L);

/* rn_event.c: the event queue, the event arena and the scratch buffer. */
int rn__event_push(rn_loop *l, const rn_event *ev);
int rn__arena_put(rn_loop *l, const void *p, size_t len, size_t *off);
void rn__arena_reset(rn_loop *l);
unsigned char *rn__scratch(rn_loop *l, size_t len);

/* rn_loop.c: the uv loop and lws context of a Lua state; core.poll and the
 * dispatch of events, the sweep, shutdown. */
rn_loop *rn__loop_get(lua_State *L);
rn_loop *rn__loop_ensure(lua_State *L);
void rn__loop_anchor(lua_State *L);
void rn__loop_open_lua(lua_State *L);

/* rn_sendq.c: a connection's queue of outgoing messages. */
rn_msg *rn__msg_new(const void *data, size_t len, int binary);
void rn__msg_unref(rn_msg *m);
int rn__sendq_push(rn_conn *c, rn_msg *m, uint64_t ticket, int *queued);
int rn__sendq_write_now(rn_conn *c, const void *data, size_t len, int binary);
int rn__sendq_flush(rn_conn *c, struct lws *wsi);
void rn__sendq_clear(rn_conn *c);
void rn__txpart_set(rn_conn *c, size_t n);
void rn__txpart_sync(rn_conn *c);
void rn__rx_release(rn_conn *c, int force);

/* rn_close.c: the closing handshake, and the closes the core decides
 * (slow consumers, eviction from a full budget). */
void rn__conn_start_close(rn_conn *c, int code, const char *reason, int rlen, int graceful);
int rn__conn_fail(rn_conn *c, int code, const char *reason);
void rn__conn_send_close_frame(rn_conn *c);
int rn__conn_check_close(const void *in, size_t len);
void rn__conn_peer_close(rn_conn *c, const void *in, size_t len);
int rn__conn_on_peer_close(rn_conn *c, const void *in, size_t len);
void rn__conn_lws_closing(rn_conn *c, struct lws *wsi);
int rn__evict(rn_server *s);
void rn__conn_sweep(rn_loop *l);

/* rn_recv.c: receiving WebSocket messages (rates, reassembly, UTF-8). */
int rn__conn_receive(rn_conn *c, struct lws *wsi, const void *in, size_t len);

/* rn_conn.c: the connection object, its lws side and its Lua type. */
rn_conn *rn__conn_new(rn_loop *l, rn_server *srv, int client);
void rn__conn_unref(rn_conn *c);
void rn__conn_established(rn_conn *c, struct lws *wsi);
int rn__conn_writeable(rn_conn *c, struct lws *wsi);
void rn__conn_closed(rn_conn *c);
void rn__conn_push(lua_State *L, rn_conn *c);
void rn__conn_open_lua(lua_State *L);

/* rn_addr.c: TCP connections per source address (max_connections_per_ip). */
int rn__ip_filter(rn_server *s, const struct lws_filter_network_conn_args *a);
void rn__ip_count(rn_server *s, struct lws *wsi);
void rn__ip_uncount(rn_server *s, struct lws *wsi);
void rn__ips_free(rn_server *s);
void rn__peer_name(struct lws *wsi, char *buf, size_t len);

/* rn_protect.c: the paths only loopback peers may use. */
int rn__peer_is_loopback(struct lws *wsi);
void rn__protect_from_table(lua_State *L, int idx, rn_server *s);
void rn__protect_free(rn_server *s);
/* rn_protect.c: 1 when a WebSocket upgrade to `path` has an endpoint on s
 * (always, unless listen got opts.ws_paths and nothing called
 * server:ws_accept_any()). */
int rn__ws_path_ok(rn_server *s, const char *path);
int rn__server_ws_accept_any(lua_State *L);
int rn__refuse_no_endpoint(struct lws *wsi);
int rn__protect_refuse(rn_server *s, struct lws *wsi, const char *path);

/* rn_status.c: the status line's reason phrase, and no Content-Length on
 * 204 and 304, in response headers lws wrote between start and *p. */
int rn__fix_status_line(unsigned char *start, unsigned char **p, unsigned char *end, int status);
void rn__drop_content_length(unsigned char *start, unsigned char **p);

/* rn_http.c: HTTP requests (headers, bodies, responses) and their Lua type. */
int rn__http_begin(rn_server *s, struct lws *wsi, rn_pss *pss);
int rn__http_refuse(struct lws *wsi, rn_pss *pss, int status);
int rn__http_body(rn_pss *pss, struct lws *wsi, const void *in, size_t len);
int rn__http_body_done(rn_pss *pss, struct lws *wsi);
int rn__http_writeable(rn_pss *pss, struct lws *wsi);
void rn__req_detach(rn_pss *pss);
void rn__req_unref(rn_req *r);
void rn__body_sweep(rn_loop *l);
void rn__req_push(lua_State *L, rn_req *r);
void rn__req_open_lua(lua_State *L);

/* rn_server.c: listening servers, the server protocol callback (HTTP and
 * the WebSocket half), counters, and the server's Lua type. */
void rn__server_unref(rn_server *s);
void rn__server_push_owner(lua_State *L, rn_server *s);
void rn__servers_release(lua_State *L, rn_loop *l);
void rn__counters_push(lua_State *L, const rn_counters *c);
void rn__traffic_push(lua_State *L, const rn_traffic *t);
void rn__server_open_lua(lua_State *L);

/* rn_tls.c: checks TLS files before lws gets them (precise errors). */
int rn__tls_check_server(const char *cert, const char *key, const char *ca,
                         char *err, size_t errlen);
int rn__tls_check_ca(const char *ca, char *err, size_t errlen);

/* rn_client.c: outgoing connections and DNS. */
void rn__client_open_lua(lua_State *L);
void rn__client_vhosts_forget(rn_loop *l);
int rn__client_cert_verdict(struct lws *wsi, void *x509_ctx, size_t preverify_ok);

/* rn_crypto.c: libcrypto primitives for the mesh (core.random, sha256,
 * hmac_sha256, equal, ed25519_*, key_load/key_write, b64*), and a
 * connection's TLS exporter value. */
void rn__crypto_open_lua(lua_State *L);
int rn__conn_tls_binding(lua_State *L, rn_conn *c);

/* rn_json.c, rn_jsondec.c: the JSON codec (core.json_encode/json_decode).
 * Whatever relaynet.json.MAX_DEPTH says, neither direction nests deeper than
 * RN_JSON_DEPTH_CAP: both recurse on the C stack, and the encoder's cycle
 * check keeps one slot per level. */
#define RN_JSON_DEPTH_CAP 63
void rn__json_open_lua(lua_State *L);
int rn__json_decode(lua_State *L);
const char *rn__json_ws(const char *p, const char *e);
int rn__json_hex4(const char *p, const char *e, unsigned *out);
/* rn_jsonscan.c: core.mesh_scan and core.mesh_splice_call, the relay's fast path
 * (a mesh envelope's routing fields read without decoding it; registered by
 * rn__json_open_lua). */
void rn__jsonscan_open_lua(lua_State *L);

#endif
