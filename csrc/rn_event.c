/*
 * relaynet core: the event queue that carries lws callbacks to Lua, the
 * event arena for small message payloads, and the scratch buffer for
 * direct writes. All three belong to the loop (rn_loop); nothing here
 * calls into Lua.
 *
 * An event holds a reference to its connection or request while queued
 * (taken here by rn__event_push); the loop drops it when the event has
 * been dispatched (rn_loop.c).
 */
#include "rn.h"

#include <stdlib.h>
#include <string.h>

int rn__event_push(rn_loop *l, const rn_event *ev) {
  size_t idx;
  if (l->ev_count == l->ev_cap) {
    size_t ncap = l->ev_cap ? l->ev_cap * 2 : 64, i;
    rn_event *n = (rn_event *)malloc(ncap * sizeof *n);
    if (!n) {
      l->oom = 1;
      free(ev->data);
      return -1;
    }
    for (i = 0; i < l->ev_count; i++)
      n[i] = l->ev[(l->ev_head + i) % l->ev_cap];
    free(l->ev);
    l->ev = n;
    l->ev_cap = ncap;
    l->ev_head = 0;
  }
  idx = (l->ev_head + l->ev_count) % l->ev_cap;
  l->ev[idx] = *ev;
  l->ev_count++;
  if (ev->conn)
    ev->conn->refcnt++;
  if (ev->req)
    ev->req->refcnt++;
  return 0;
}

/* The event arena: message events copy small payloads here instead of into
 * a malloc'd buffer each, so a message costs no allocation on its way to Lua.
 * The arena is emptied by rn_poll whenever the event queue is empty (every
 * payload has been copied into a Lua string by then). Returns 0 and the
 * payload's offset, or -1 when the arena is at its cap or out of memory (the
 * caller then mallocs). */
#define RN_ARENA_MAX (4u << 20)

int rn__arena_put(rn_loop *l, const void *p, size_t len, size_t *off) {
  size_t need = l->arena_len + len;
  if (len == 0) { /* the arena may not exist yet: no memcpy to NULL */
    *off = l->arena_len;
    return 0;
  }
  if (need > RN_ARENA_MAX || rn__grow(&l->arena, &l->arena_cap, need, 16384, 0) < 0)
    return -1;
  memcpy(l->arena + l->arena_len, p, len);
  *off = l->arena_len;
  l->arena_len = need;
  return 0;
}

unsigned char *rn__scratch(rn_loop *l, size_t len) {
  if (rn__grow(&l->scratch, &l->scratch_cap, LWS_PRE + len, 4096, 0) < 0)
    return NULL;
  return l->scratch + LWS_PRE;
}


/* Empties the arena (every payload has been copied into a Lua string once
 * the queue is empty), giving the memory back when a burst grew it. */
void rn__arena_reset(rn_loop *l) {
  l->arena_len = 0;
  if (l->arena_cap > RN_ARENA_MAX / 4) {
    free(l->arena);
    l->arena = NULL;
    l->arena_cap = 0;
  }
}
