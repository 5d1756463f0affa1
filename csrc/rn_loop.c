/*
 * relaynet core: the per-Lua-state loop (one uv loop, one lws context),
 * core.poll and the dispatch of queued events (rn_event.c) to Lua, the
 * sweep timer, signals, and shutdown.
 *
 * Lifecycle: the loop is created lazily by the first call that needs it
 * (listen, connect, poll) and torn down by core.shutdown(), which closes every
 * uv handle and destroys the lws context in the two phases a foreign loop
 * needs. After shutdown a new loop can be created (the test suite runs many
 * rn.run() cycles in one process).
 */
#include "rn.h"

#include <dlfcn.h> /* luv's C API, found in the loaded luv module (rn_luv_hook) */
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The loop context lives in the registry under the address of this
 * variable: a light-userdata key costs no string look-up, and rn__loop_get
 * runs several times per turn of the loop. */
static const char rn__loop_key = 0;

rn_loop *rn__loop_get(lua_State *L) {
  rn_loop *l;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &rn__loop_key);
  l = (rn_loop *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  return l;
}

static void rn__noop_timer(uv_timer_t *t) { (void)t; }

/* Once a server has given back RN_TRIM_AFTER bytes of its buffers (a burst
 * of large messages or bodies is over), glibc is asked to return the freed
 * pages: buffers of 128 KiB to 1 MiB come from the heap once glibc has
 * raised its mmap threshold, and without a trim RSS would stay at the
 * burst's peak. At most once a second, from the sweep. */
#define RN_TRIM_AFTER (8u << 20)

static void rn__sweep_cb(uv_timer_t *t) {
  rn_loop *l = (rn_loop *)t->data;
  rn_server *s;
  int trim = 0;
  rn__conn_sweep(l);
  rn__body_sweep(l);
  for (s = l->servers; s; s = s->next)
    if (s->buffered_peak > s->buffered + RN_TRIM_AFTER) {
      s->buffered_peak = s->buffered;
      trim = 1;
    }
#ifdef __GLIBC__
  if (trim)
    malloc_trim(0);
#else
  (void)trim;
#endif
}

static void rn__signal_cb(uv_signal_t *s, int signum) {
  rn_loop *l = (rn_loop *)s->data;
  rn_event ev;
  memset(&ev, 0, sizeof ev);
  ev.type = RN_EV_SIGNAL;
  ev.code = signum;
  rn__event_push(l, &ev);
}

static void rn__handle_closed(uv_handle_t *h) {
  rn_loop *l = (rn_loop *)h->data;
  l->handles_open--;
}

static int rn__loop_setup(rn_loop *l) {
  struct lws_context_creation_info info;
  void *foreign[1];

  rn__log_lws_apply(); /* lws's log through relaynet.log's level (rn_log.c) */
  if (uv_loop_init(&l->loop) != 0)
    return -1;
  l->loop.data = l;

  memset(&info, 0, sizeof info);
  foreign[0] = &l->loop;
  info.foreign_loops = foreign;
  /* UTF-8 is validated by relaynet itself (rn_conn.c): lws's validator
   * drops the TCP connection without a close frame on a bad close reason. */
  /* DO_SSL_GLOBAL_INIT: OpenSSL is set up once for the context (lws's
   * certificate-verify callback needs it even when only clients use TLS);
   * each TLS vhost asks for its own contexts (rn_server.c, rn_client.c). */
  info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS |
                 LWS_SERVER_OPTION_JUST_USE_RAW_ORIGIN | /* send Origin as given */
                 LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.pt_serv_buf_size = 16384;
  info.max_http_header_data = 8192;
  info.timeout_secs = 10;
  info.connect_timeout_secs = 10;
  info.fd_limit_per_thread = 0;
  info.pcontext = &l->ctx;
  l->ctx = lws_create_context(&info);
  if (!l->ctx) {
    uv_loop_close(&l->loop);
    return -1;
  }


  uv_timer_init(&l->loop, &l->poll_timer);
  uv_timer_init(&l->loop, &l->sweep_timer);
  uv_signal_init(&l->loop, &l->sig_int);
  uv_signal_init(&l->loop, &l->sig_term);
  l->poll_timer.data = l->sweep_timer.data = l;
  l->sig_int.data = l->sig_term.data = l;
  l->handles_open = 4;
  uv_timer_start(&l->sweep_timer, rn__sweep_cb, 1000, 1000);
  uv_unref((uv_handle_t *)&l->sweep_timer);
  uv_signal_start(&l->sig_int, rn__signal_cb, SIGINT);
  uv_signal_start(&l->sig_term, rn__signal_cb, SIGTERM);
  uv_unref((uv_handle_t *)&l->sig_int);
  uv_unref((uv_handle_t *)&l->sig_term);
  l->running = 1;
  return 0;
}

rn_loop *rn__loop_ensure(lua_State *L) {
  rn_loop *l = rn__loop_get(L);
  if (!l->running && rn__loop_setup(l) != 0)
    luaL_error(L, "relaynet: cannot create the event loop (is the "
                  "libwebsockets libuv plugin, libwebsockets-evlib-uv, installed?)");
  return l;
}

/* Takes the oldest event off the queue (the caller checked ev_count). */
static void rn__event_pop(rn_loop *l, rn_event *ev) {
  *ev = l->ev[l->ev_head];
  l->ev_head = (l->ev_head + 1) % l->ev_cap;
  l->ev_count--;
}

static void rn__event_release(rn_event *ev) {
  free(ev->data);
  ev->data = NULL;
  if (ev->conn)
    rn__conn_unref(ev->conn);
  if (ev->req)
    rn__req_unref(ev->req);
}

/* Releases every queued event (shutdown: they refer to connections lws has
 * closed). */
static void rn__events_drop(rn_loop *l) {
  while (l->ev_count > 0) {
    rn_event ev;
    rn__event_pop(l, &ev);
    rn__event_release(&ev);
  }
}

/* Pushes the Lua values of one event and calls dispatch(type, ...) (the
 * function at stack index 2). */
static void rn__dispatch_one(lua_State *L, rn_loop *l, rn_event *ev) {
  int n = 1;
  lua_pushvalue(L, 2);
  lua_pushinteger(L, ev->type);
  switch (ev->type) {
  case RN_EV_HTTP:
    rn__req_push(L, ev->req);
    rn__server_push_owner(L, ev->req->srv);
    n += 2;
    break;
  case RN_EV_OPEN:
    rn__conn_push(L, ev->conn);
    lua_pushinteger(L, (lua_Integer)ev->conn->id);
    if (ev->conn->srv) {
      /* A server connection: its server, its path and its peer. */
      rn__server_push_owner(L, ev->conn->srv);
      lua_pushstring(L, ev->conn->path ? ev->conn->path : "/");
      lua_pushstring(L, ev->conn->peer);
      n += 5;
    } else {
      n += 2;
    }
    break;
  case RN_EV_MESSAGE:
    lua_pushinteger(L, (lua_Integer)ev->conn->id);
    if (ev->in_arena && ev->len)
      lua_pushlstring(L, (const char *)l->arena + ev->off, ev->len);
    else
      lua_pushlstring(L, ev->data ? ev->data : "", ev->len);
    lua_pushboolean(L, ev->flag);
    n += 3;
    break;
  case RN_EV_CLOSE:
    lua_pushinteger(L, (lua_Integer)ev->conn->id);
    lua_pushinteger(L, ev->code);
    lua_pushlstring(L, ev->data ? ev->data : "", ev->len);
    n += 3;
    break;
  case RN_EV_WRITTEN:
    lua_pushinteger(L, (lua_Integer)ev->conn->id);
    lua_pushinteger(L, (lua_Integer)ev->ticket);
    lua_pushboolean(L, ev->flag);
    n += 3;
    break;
  case RN_EV_DRAIN:
    lua_pushinteger(L, (lua_Integer)ev->conn->id);
    n += 1;
    break;
  case RN_EV_CONNERR:
    lua_pushinteger(L, (lua_Integer)ev->conn->id);
    lua_pushlstring(L, ev->data ? ev->data : "connection failed", ev->data ? ev->len : 17);
    n += 2;
    break;
  case RN_EV_SIGNAL:
    lua_pushinteger(L, ev->code);
    n += 1;
    break;
  case RN_EV_RESOLVED:
    lua_pushinteger(L, (lua_Integer)ev->ticket);
    if (ev->flag)
      lua_pushlstring(L, ev->data, ev->len);
    else
      lua_pushnil(L);
    if (ev->flag)
      lua_pushnil(L);
    else
      lua_pushlstring(L, ev->data ? ev->data : "", ev->len);
    n += 3;
    break;
  default:
    break;
  }
  lua_call(L, n, 0);
}

/* Dispatches every queued event, in order, under the one protected call
 * rn_poll makes (args: the loop, dispatch). Each event leaves the queue
 * before dispatch sees it and sits in l->cur meanwhile, so when dispatch
 * raises, rn_poll releases that event's references and the queue stays
 * consistent. Returns the number of events dispatched. */
static int rn__dispatch_all(lua_State *L) {
  rn_loop *l = (rn_loop *)lua_touserdata(L, 1);
  lua_Integer count = 0;
  while (l->ev_count > 0) {
    rn__event_pop(l, &l->cur);
    l->cur_set = 1;
    rn__dispatch_one(L, l, &l->cur);
    l->cur_set = 0;
    rn__event_release(&l->cur);
    count++;
  }
  lua_pushinteger(L, count);
  return 1;
}

/* ---- a nested event loop --------------------------------------------------
 *
 * core.nest_loop(fd, step) drives another event loop from this one (the
 * usual way to embed a libuv loop: relaynet.uvbridge uses it for luv's).
 * fd is that loop's backend file descriptor (uv_backend_fd: it becomes
 * readable when the loop has I/O to handle). relaynet's loop watches fd with
 * a uv_poll_t, and core.poll calls step() before every uv_run, outside every
 * uv and lws frame, under a protected call (an error propagates as a
 * dispatch error does). step runs the other loop without blocking and
 * returns the milliseconds core.poll may block for it (negative: no limit of
 * its own); core.poll blocks at most the smaller of that and its own
 * timeout. core.poll refuses to be called from inside step.
 * core.nest_loop(nil) forgets the nested loop. There is one per Lua state;
 * it stays registered across runs: the watch is a handle of the current
 * loop, closed by core.shutdown with the others and made again by the first
 * core.poll of the next loop. */
typedef struct rn_nest {
  int fd;
  uv_poll_t *poll; /* malloc'd; NULL until the current loop watches fd */
} rn_nest;

/* The rn_nest userdata (its user value: step) sits in the registry under
 * this key; rn__nests counts the registered ones in the process, so a
 * process that nests nothing does no look-up per turn. */
static const char rn__nest_key = 0;
static int rn__nests = 0;

static void rn__nest_readable(uv_poll_t *p, int status, int events) {
  (void)p;
  (void)status;
  (void)events; /* waking uv_run is all it takes: step runs the nested loop */
}

static void rn__nest_closed(uv_handle_t *h) {
  free(h);
}

/* Stops watching the nested loop's fd (shutdown, core.nest_loop(nil)). */
static void rn__nest_unwatch(lua_State *L) {
  rn_nest *n;
  if (rn__nests == 0)
    return;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &rn__nest_key);
  n = (rn_nest *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (n && n->poll) {
    uv_close((uv_handle_t *)n->poll, rn__nest_closed);
    n->poll = NULL;
  }
}

/* Runs the nested loop's step before core.poll blocks for at most timeout
 * ms, and returns the timeout to block for. */
static lua_Integer rn__nest_turn(lua_State *L, rn_loop *l, lua_Integer timeout) {
  rn_nest *n;
  lua_Integer ms;
  int st;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &rn__nest_key);
  n = (rn_nest *)lua_touserdata(L, -1);
  if (!n) {
    lua_pop(L, 1);
    return timeout;
  }
  if (!n->poll) {
    n->poll = (uv_poll_t *)malloc(sizeof *n->poll);
    if (!n->poll || uv_poll_init(&l->loop, n->poll, n->fd) != 0) {
      free(n->poll);
      n->poll = NULL;
      return luaL_error(L, "relaynet: cannot watch the nested loop's fd %d", n->fd);
    }
    uv_poll_start(n->poll, UV_READABLE, rn__nest_readable);
  }
  lua_getiuservalue(L, -1, 1);
  l->dispatching = 1;
  st = lua_pcall(L, 0, 1, 0);
  l->dispatching = 0;
  if (st != LUA_OK)
    return lua_error(L);
  ms = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : -1;
  lua_pop(L, 2);
  if (ms >= 0 && (timeout < 0 || ms < timeout))
    timeout = ms;
  return timeout;
}

/* core.nest_loop(fd, step) or core.nest_loop(nil): see above. */
static int rn_nest_loop(lua_State *L) {
  rn_nest *n;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &rn__nest_key);
  n = (rn_nest *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (lua_isnoneornil(L, 1)) {
    if (n) {
      rn__nest_unwatch(L);
      lua_pushnil(L);
      lua_rawsetp(L, LUA_REGISTRYINDEX, &rn__nest_key);
      rn__nests--;
    }
    return 0;
  }
  if (n)
    return luaL_error(L, "relaynet: a nested loop is already registered");
  n = (rn_nest *)lua_newuserdatauv(L, sizeof *n, 1);
  n->fd = (int)luaL_checkinteger(L, 1);
  n->poll = NULL;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &rn__nest_key);
  rn__nests++;
  return 0;
}

/* ---- luv's callbacks --------------------------------------------------------
 *
 * luv (the libuv binding) calls every Lua callback through a function its
 * C API lets a host replace (luv.h: luv_set_callback, luv_CFpcall), and it
 * calls them on the thread that first required it. Its own function prints
 * an error and exits the process, and the thread may be a coroutine that
 * has since been collected. core.luv_hook(path, report) finds luv's C API
 * in the loaded module at `path` (or in the program, when luv is linked
 * in), makes luv call back on the main thread, and replaces that function
 * with rn__luv_pcall, which hands the error, with its traceback, to
 * report(message) and lets the loop go on. Returns true, or nil, message,
 * "ENOTSUP" when luv's C API is not found. The signatures below are luv.h's
 * (luv 1.30 and later). */
typedef int (*rn__luv_pcall_fn)(lua_State *L, int nargs, int nresults, int flags);
typedef void (*rn__luv_set_loop_fn)(lua_State *L, uv_loop_t *loop);
typedef uv_loop_t *(*rn__luv_loop_fn)(lua_State *L);
typedef void (*rn__luv_set_callback_fn)(lua_State *L, rn__luv_pcall_fn pcall);
#define RN_LUVF_NOTRACEBACK 0x02 /* luv.h: LUVF_CALLBACK_NOTRACEBACK */
#define RN_LUVF_NOERRMSG 0x04    /* luv.h: LUVF_CALLBACK_NOERRMSG */

static const char rn__luv_report_key = 0;

static int rn__luv_traceback(lua_State *L) {
  luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
  return 1;
}

/* luv_CFpcall's contract (luv.h): calls the function under its nargs
 * arguments; on success leaves its results and returns their number, on
 * error leaves nothing and returns minus lua_pcall's status. */
static int rn__luv_pcall(lua_State *L, int nargs, int nresults, int flags) {
  int fi = lua_gettop(L) - nargs; /* the function's index */
  int tb = !(flags & (RN_LUVF_NOTRACEBACK | RN_LUVF_NOERRMSG));
  int st;
  if (tb) {
    lua_pushcfunction(L, rn__luv_traceback);
    lua_insert(L, fi);
  }
  st = lua_pcall(L, nargs, nresults, tb ? fi : 0);
  if (tb)
    lua_remove(L, fi);
  if (st == LUA_OK)
    return nresults == LUA_MULTRET ? lua_gettop(L) - fi + 1 : nresults;
  if (flags & RN_LUVF_NOERRMSG) {
    lua_pop(L, 1);
    return -st;
  }
  lua_rawgetp(L, LUA_REGISTRYINDEX, &rn__luv_report_key);
  lua_insert(L, -2);
  if (!lua_isfunction(L, -2) || lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "relaynet: luv callback: %s\n", lua_isstring(L, -1) ? lua_tostring(L, -1) : "(error)");
    lua_pop(L, 2);
  }
  return -st;
}

static int rn_luv_hook(lua_State *L) {
  const char *path = luaL_optstring(L, 1, NULL);
  void *lib = NULL;
  rn__luv_set_loop_fn set_loop = NULL;
  rn__luv_loop_fn get_loop = NULL;
  rn__luv_set_callback_fn set_callback = NULL;
  lua_State *main;
  uv_loop_t *loop;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (path)
    lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
  if (!lib)
    lib = dlopen(NULL, RTLD_NOW);
  if (lib) {
    set_loop = (rn__luv_set_loop_fn)dlsym(lib, "luv_set_loop");
    get_loop = (rn__luv_loop_fn)dlsym(lib, "luv_loop");
    set_callback = (rn__luv_set_callback_fn)dlsym(lib, "luv_set_callback");
  }
  if (!set_loop || !get_loop || !set_callback) {
    if (lib)
      dlclose(lib);
    return rn__fail(L, "ENOTSUP", "luv's C API (luv_set_callback) was not found in %s",
                    path ? path : "the program");
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  main = lua_tothread(L, -1);
  lua_pop(L, 1);
  loop = get_loop(main);
  if (!loop) {
    dlclose(lib);
    return rn__fail(L, "ENOTSUP", "luv has no loop yet (require \"luv\" first)");
  }
  lua_pushvalue(L, 2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &rn__luv_report_key);
  set_loop(main, loop); /* the same loop; luv now calls back on the main thread */
  set_callback(main, rn__luv_pcall);
  dlclose(lib); /* the module stays loaded: Lua holds its own handle */
  lua_pushboolean(L, 1);
  return 1;
}

/* core.poll(timeout_ms, dispatch): runs one iteration of the uv loop (blocking
 * at most timeout_ms; negative blocks until something happens; 0 never
 * blocks), then calls dispatch for every queued event. Returns the number of
 * events dispatched. Errors raised by dispatch propagate after the event's
 * references have been released; the events after it stay queued for the
 * next call. dispatch must not call core.poll. */
static int rn_poll(lua_State *L) {
  rn_loop *l = rn__loop_ensure(L);
  lua_Integer timeout = luaL_optinteger(L, 1, -1);
  int st;
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (l->dispatching)
    return luaL_error(L, "relaynet: core.poll called from inside an event dispatch");
  if (l->ev_count == 0) {
    rn__arena_reset(l);
    if (rn__nests > 0)
      timeout = rn__nest_turn(L, l, timeout); /* a nested loop's step (luv) */
    if (timeout == 0) {
      uv_run(&l->loop, UV_RUN_NOWAIT);
    } else {
      if (timeout > 0) {
        /* The scheduler's next deadline rarely moves between turns: keep the
         * timer running when it is already set for (about) that time, so a
         * busy loop does not pay a timer start and stop per turn. An early
         * or late wake-up by a millisecond only costs one more turn. */
        uint64_t due = uv_now(&l->loop) + (uint64_t)timeout;
        if (!uv_is_active((uv_handle_t *)&l->poll_timer) || due + 1 < l->poll_due ||
            l->poll_due + 1 < due) {
          uv_timer_start(&l->poll_timer, rn__noop_timer, (uint64_t)timeout, 0);
          l->poll_due = due;
        }
      } else if (uv_is_active((uv_handle_t *)&l->poll_timer)) {
        uv_timer_stop(&l->poll_timer);
      }
      uv_run(&l->loop, UV_RUN_ONCE);
    }
  }
  if (l->ev_count == 0) {
    lua_pushinteger(L, 0);
    return 1;
  }
  lua_pushcfunction(L, rn__dispatch_all);
  lua_pushlightuserdata(L, l);
  lua_pushvalue(L, 2);
  l->dispatching = 1;
  st = lua_pcall(L, 2, 1, 0);
  l->dispatching = 0;
  if (st != LUA_OK) {
    if (l->cur_set) {
      l->cur_set = 0;
      rn__event_release(&l->cur);
    }
    return lua_error(L);
  }
  return 1;
}

static int rn_now(lua_State *L) {
  rn_loop *l = rn__loop_get(L);
  if (l->running) {
    uv_update_time(&l->loop);
    lua_pushnumber(L, (lua_Number)uv_now(&l->loop) / 1000.0);
  } else {
    lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  }
  return 1;
}

static void rn__walk_count(uv_handle_t *h, void *arg) {
  (void)h;
  (*(int *)arg)++;
}

/* core.shutdown(): closes every connection hard (Lua closes them gracefully
 * before calling this), destroys the lws context and closes the uv loop.
 * Returns true, or nil, message, "EBUSY" when uv handles were left open. */
static int rn_shutdown(lua_State *L) {
  rn_loop *l = rn__loop_get(L);
  int left = 0, i;
  if (!l->running) {
    lua_pushboolean(L, 1);
    return 1;
  }
  rn__nest_unwatch(L); /* the nested loop's watch (luv) */
  uv_close((uv_handle_t *)&l->poll_timer, rn__handle_closed);
  uv_close((uv_handle_t *)&l->sweep_timer, rn__handle_closed);
  uv_close((uv_handle_t *)&l->sig_int, rn__handle_closed);
  uv_close((uv_handle_t *)&l->sig_term, rn__handle_closed);
  /* Phase one starts closing lws's uv handles; the loop must run for their
   * close callbacks; phase two frees the context (l->ctx becomes NULL). */
  lws_context_destroy(l->ctx);
  for (i = 0; i < 1000 && l->ctx; i++) {
    uv_run(&l->loop, UV_RUN_NOWAIT);
    if (l->ctx && !uv_loop_alive(&l->loop))
      lws_context_destroy(l->ctx);
  }
  while (uv_run(&l->loop, UV_RUN_NOWAIT) && i++ < 2000)
    ;
  rn__servers_release(L, l);
  /* Events still queued refer to connections lws has now closed. */
  rn__events_drop(l);
  uv_walk(&l->loop, rn__walk_count, &left);
  if (uv_loop_close(&l->loop) != 0 || left > 0 || l->ctx) {
    l->running = 0;
    rn__client_vhosts_forget(l);
    return rn__fail(L, "EBUSY", "%d uv handle(s) left open at shutdown", left);
  }
  l->running = 0;
  rn__client_vhosts_forget(l);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.hrtime(): a monotonic clock in seconds with nanosecond resolution
 * (for measuring round trips; rn.now() is the loop's millisecond clock). */
static int rn_hrtime(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

/* core.trim_memory(): gives freed heap memory back to the system
 * (glibc's malloc_trim; elsewhere a no-op). Lua frees many small blocks
 * between survivors, which glibc keeps mapped: the mesh calls this after a
 * full collection when a link that held a large table went down. Returns
 * true when memory was released. */
static int rn_trim_memory(lua_State *L) {
#ifdef __GLIBC__
  lua_pushboolean(L, malloc_trim(0));
#else
  lua_pushboolean(L, 0);
#endif
  return 1;
}

static int rn_running(lua_State *L) {
  lua_pushboolean(L, rn__loop_get(L)->running);
  return 1;
}

static int rn_loop_gc(lua_State *L) {
  rn_loop *l = (rn_loop *)lua_touserdata(L, 1);
  if (l->running) {
    lua_settop(L, 0);
    rn_shutdown(L);
  }
  free(l->ev);
  free(l->scratch);
  free(l->arena);
  l->ev = NULL;
  l->scratch = NULL;
  l->arena = NULL;
  l->arena_len = l->arena_cap = 0;
  return 0;
}

/* The loop context lives in a full userdata anchored in the registry, so
 * that its memory is released with the Lua state even if shutdown never
 * ran. Called by luaopen (a second require finds it there). */
void rn__loop_anchor(lua_State *L) {
  rn_loop *l;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &rn__loop_key);
  if (!lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  l = (rn_loop *)lua_newuserdatauv(L, sizeof *l, 0);
  memset(l, 0, sizeof *l);
  l->next_conn_id = 1;
  l->next_ticket = 1;
  lua_newtable(L);
  lua_pushcfunction(L, rn_loop_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &rn__loop_key);
}

/* The loop's functions in the core table at the top of the stack. */
void rn__loop_open_lua(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"poll", rn_poll},
    {"now", rn_now},
    {"hrtime", rn_hrtime},
    {"trim_memory", rn_trim_memory},
    {"shutdown", rn_shutdown},
    {"running", rn_running},
    {"nest_loop", rn_nest_loop}, /* relaynet.uvbridge: luv on this loop */
    {"luv_hook", rn_luv_hook},
    {NULL, NULL}};
  luaL_setfuncs(L, funcs, 0);
}
