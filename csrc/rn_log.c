/*
 * relaynet core: the log line's format, shared with relaynet.log, and
 * libwebsockets' own log routed into it.
 *
 * A log line is "<ISO-8601 UTC time with milliseconds> <LEVEL> <text>",
 * one line per record, on stderr. relaynet.log (Lua) writes its records
 * itself; it takes the time from core.log_stamp() and tells this file its
 * level with core.log_level(n) (1 error, 2 warn, 3 info, 4 debug).
 *
 * libwebsockets logs through the emit function below, which lws calls from
 * inside its own frames: it never calls Lua. It writes the line to stderr
 * at once, in the same format: lws errors and warnings as WARN (shown at
 * level warn and above), lws notices as DEBUG (shown at level debug).
 * Errors relaynet reports itself (a listen that cannot bind returns
 * EADDRINUSE or EACCES) are DEBUG lines rather than repeats of that
 * report: RN__LWS_QUIET lists them.
 * It is bounded: lws formats each line into a 256-byte buffer, control
 * characters are replaced, and at most RN_LOG_LWS_BURST lines are written
 * per RN_LOG_LWS_WINDOW seconds; the lines dropped past that are counted
 * and the count is written before the next line that is shown.
 *
 * RELAYNET_LWS_LOG=<mask> (lws's LLL_* bits) overrides all this for
 * debugging: lws then logs that mask with its own stderr emitter.
 */
#include "rn.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RN_LOG_LWS_BURST 20
#define RN_LOG_LWS_WINDOW 10

/* lws errors that relaynet reports itself, as its own error codes: lines
 * that contain one of these are logged at debug. */
static const char *const RN__LWS_QUIET[] = {
    "ERROR on binding fd", /* listen: EADDRINUSE, EACCES (rn_server.c) */
    "init server failed",  /* ... the same failure, one line later */
    "SSL error:",          /* a wss:// certificate check: ECERT (rn_client.c) */
    "lws_client_handshake: got bad HTTP response", /* a refused upgrade: ECONNREFUSED */
    NULL};

static int rn__log_level_n = 2; /* warn: a library is quiet by default */
static time_t rn__lws_window;    /* start of the current rate window */
static int rn__lws_lines;         /* lines written in that window */
static unsigned long rn__lws_dropped; /* lines dropped since the last shown */

size_t rn__log_stamp(char *buf, size_t cap) {
  struct timespec ts;
  struct tm tm;
  int n;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  n = snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
               tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000000));
  return n < 0 ? 0 : ((size_t)n < cap ? (size_t)n : cap - 1);
}

/* Writes one whole line with a single write(2), so it is never split. */
static void rn__log_line(const char *level, const char *text, size_t len) {
  char line[400];
  size_t n = rn__log_stamp(line, sizeof line), i;
  int m = snprintf(line + n, sizeof line - n, " %s lws: ", level);
  if (m > 0)
    n += (size_t)m;
  for (i = 0; i < len && n < sizeof line - 1; i++) {
    unsigned char ch = (unsigned char)text[i];
    line[n++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
  }
  line[n++] = '\n';
  if (write(2, line, n) < 0) {
    /* stderr is gone: there is nowhere to say so */
  }
}

static void rn__lws_emit(int level, const char *line) {
  size_t len = strlen(line);
  time_t now = time(NULL);
  const char *name = (level & (LLL_ERR | LLL_WARN)) ? "WARN" : "DEBUG";
  int i;
  for (i = 0; RN__LWS_QUIET[i]; i++) {
    if (strstr(line, RN__LWS_QUIET[i])) {
      if (rn__log_level_n < 4)
        return;
      name = "DEBUG";
    }
  }
  while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' '))
    len--;
  if (now - rn__lws_window >= RN_LOG_LWS_WINDOW) {
    rn__lws_window = now;
    rn__lws_lines = 0;
  }
  if (rn__lws_lines >= RN_LOG_LWS_BURST) {
    rn__lws_dropped++;
    return;
  }
  rn__lws_lines++;
  if (rn__lws_dropped) {
    char msg[96];
    int m = snprintf(msg, sizeof msg, "%lu lines of libwebsockets' log were dropped (more than %d in %d s)",
                     rn__lws_dropped, RN_LOG_LWS_BURST, RN_LOG_LWS_WINDOW);
    rn__lws_dropped = 0;
    if (m > 0)
      rn__log_line("WARN", msg, (size_t)m < sizeof msg ? (size_t)m : sizeof msg - 1);
  }
  rn__log_line(name, line, len);
}

void rn__log_lws_apply(void) {
  const char *dbg = getenv("RELAYNET_LWS_LOG");
  int mask = 0;
  if (dbg) {
    lws_set_log_level(atoi(dbg), lwsl_emit_stderr);
    return;
  }
  if (rn__log_level_n >= 2)
    mask |= LLL_ERR | LLL_WARN;
  if (rn__log_level_n >= 4)
    mask |= LLL_NOTICE;
  lws_set_log_level(mask, rn__lws_emit);
}

/* core.log_level([n]) -> the level in force (before a change): sets the
 * threshold (1 error .. 4 debug) that libwebsockets' lines are held to. */
static int rn_log_level(lua_State *L) {
  int old = rn__log_level_n;
  if (!lua_isnoneornil(L, 1)) {
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 1 && n <= 4, 1, "must be 1..4");
    rn__log_level_n = (int)n;
    rn__log_lws_apply();
  }
  lua_pushinteger(L, old);
  return 1;
}

/* core.log_stamp() -> "2026-12-03T00:49:29.123Z", the time of a log line. */
static int rn_log_stamp(lua_State *L) {
  char buf[40];
  size_t n = rn__log_stamp(buf, sizeof buf);
  lua_pushlstring(L, buf, n);
  return 1;
}

void rn__log_open_lua(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"log_level", rn_log_level},
      {"log_stamp", rn_log_stamp},
      {NULL, NULL}};
  luaL_setfuncs(L, funcs, 0);
}
