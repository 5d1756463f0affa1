/*
 * relaynet core: WebSocket connections, server and client side alike.
 *
 * Memory contract: an rn_conn is reference counted. lws holds one reference
 * from establishment (or connect) until LWS_CALLBACK_CLOSED / CLIENT_CLOSED,
 * the Lua box holds one until it is collected, and every queued event holds
 * one. conn->wsi is valid only while the lws reference is held; every path
 * that writes checks it first.
 *
 * Sending goes through the send queue (rn_sendq.c), receiving through
 * rn_recv.c, closing through rn_close.c; this file holds the object's
 * lifetime, the lws events that change it, the send-refusal policy, and
 * the Lua type (relaynet.conn) with core.broadcast.
 */
#include "rn.h"

#include <stdlib.h>
#include <string.h>

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

void rn__conn_unref(rn_conn *c) {
  if (--c->refcnt > 0)
    return;
  rn__sendq_clear(c);
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

/* LWS_CALLBACK_SERVER_WRITEABLE / CLIENT_WRITEABLE: writes what is queued,
 * then the close frame of a closing connection once nothing is left. */
int rn__conn_writeable(rn_conn *c, struct lws *wsi) {
  if (!c || c->wsi != wsi)
    return 0;
  /* lws calls this only once it has written any pong it held (its own
   * WRITEABLE handling sends pending control frames first): from now on a
   * message may be written at once again. */
  c->tx_defer = 0;
  rn__txpart_sync(c);
  rn__rx_release(c, 0); /* lws calls this only once it holds no partial write */
  if (rn__sendq_flush(c, wsi) < 0)
    return -1;
  if (c->qhead || lws_partial_buffered(wsi)) {
    lws_callback_on_writable(wsi);
    return 0;
  }
  if (c->state == RN_CS_CLOSING && !c->close_sent)
    rn__conn_send_close_frame(c);
  return 0;
}

void rn__conn_closed(rn_conn *c) {
  rn_event ev;
  if (c->state == RN_CS_CLOSED)
    return;
  c->wsi = NULL;
  c->state = RN_CS_CLOSED;
  rn__sendq_clear(c);
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

/* Whether a message of `len` bytes may go to c now. One that must be queued
 * is refused past the connection's send_queue; any message is refused past
 * its server's max_buffered (after trying an eviction), except one written
 * at once (rn__conn_direct: nothing queued, no partial write held by lws,
 * no pong to let go first) of at most
 * RN_BUDGET_DIRECT_MAX bytes. Returns NULL, or the name of the limit that
 * refuses it. Used by every send path (send, send_async, broadcast). */
static const char *rn__send_refused(rn_conn *c, size_t len) {
  const rn_limits *lim = rn__conn_limits(c);
  int direct;
  rn__txpart_sync(c);
  direct = rn__conn_direct(c);
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
static rn_conn **rn__conn_test(lua_State *L, int idx) {
  void *p = lua_touserdata(L, idx);
  if (p && lua_getmetatable(L, idx)) {
    int same = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (same)
      return (rn_conn **)p;
  }
  return (rn_conn **)luaL_testudata(L, idx, RN_CONN_MT);
}

/* The same, raising (a type error) when the value is not a connection. */
static rn_conn **rn__conn_box(lua_State *L, int idx) {
  rn_conn **b = rn__conn_test(L, idx);
  return b ? b : (rn_conn **)luaL_checkudata(L, idx, RN_CONN_MT);
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
  if (rn__conn_direct(c)) {
    /* Fast path: write at once from a scratch buffer; lws keeps any tail. */
    int rc = rn__sendq_write_now(c, data, len, binary);
    if (rc == -2)
      return luaL_error(L, "out of memory");
    if (rc < 0) {
      /* Outside a callback lws does not close a failed wsi by itself. */
      c->state = RN_CS_CLOSING;
      lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_ACK, LWS_TO_KILL_ASYNC);
      lws_cancel_service(c->L->ctx);
      return rn__fail(L, "ECLOSED", "connection c%I failed while writing", (lua_Integer)c->id);
    }
    lua_pushboolean(L, 1);
    return 1;
  }
  {
    rn_msg *m = rn__msg_new(data, len, binary);
    if (!m)
      return luaL_error(L, "out of memory");
    if (notify)
      ticket = c->L->next_ticket++;
    if (rn__sendq_push(c, m, ticket, &queued) < 0) {
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
  lua_createtable(L, 0, 11);
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
  rn__traffic_push(L, &c->traffic);
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

/* conn:tls_binding() -> the TLS exporter value, or nil (rn_crypto.c). */
static int rn_conn_tls_binding(lua_State *L) {
  return rn__conn_tls_binding(L, rn__conn_check(L, 1));
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
    if (rn__sendq_push(c, m, 0, &queued) == 0)
      count++;
    rn__conn_unref(c);
  }
  rn__msg_unref(m);
  lua_pushinteger(L, count);
  return 1;
}

/* core.conn_send_many(data, conns, n) -> count: data as one text message to
 * each of conns[1..n] (connection objects), one refcounted message shared by
 * their queues as in core.broadcast (the pub/sub fan-out to WebSocket
 * subscribers, mesh/pubsub.lua). A connection that is released or not open,
 * or whose send_queue or server budget refuses the message, misses it, as
 * core.conn_send would refuse it; count is how many took it. */
static int rn_conn_send_many(lua_State *L) {
  rn_loop *l = rn__loop_get(L);
  size_t len;
  const char *data = luaL_checklstring(L, 1, &len);
  lua_Integer i, n;
  int count = 0, top;
  rn_msg *m;
  luaL_checktype(L, 2, LUA_TTABLE);
  n = luaL_checkinteger(L, 3);
  lua_settop(L, 3);
  if (!l->running || n <= 0) {
    lua_pushinteger(L, 0);
    return 1;
  }
  m = rn__msg_new(data, len, 0);
  if (!m)
    return luaL_error(L, "out of memory");
  top = lua_gettop(L);
  for (i = 1; i <= n; i++) {
    rn_conn *c;
    int queued;
    rn_conn **b;
    lua_rawgeti(L, 2, i);
    b = rn__conn_test(L, top + 1);
    if (!b) {
      rn__msg_unref(m); /* the queues that took it hold their own references */
      return luaL_error(L, "conn_send_many: entry %d of the list is not a connection", (int)i);
    }
    c = *b;
    lua_settop(L, top);
    if (!c || !c->wsi || c->state != RN_CS_OPEN)
      continue;
    if (rn__send_refused(c, len))
      continue;
    c->refcnt++; /* a failed write may close it synchronously */
    if (rn__sendq_push(c, m, 0, &queued) == 0)
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
    {"tls_binding", rn_conn_tls_binding},
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
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, rn_conn_send_many, 1);
  lua_setfield(L, -3, "conn_send_many");
  lua_pop(L, 1);
  lua_pushcfunction(L, rn_broadcast);
  lua_setfield(L, -2, "broadcast");
}
