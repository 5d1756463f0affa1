/*
 * Growable byte buffers, shared by the event arena and write scratch
 * (rn_loop.c), WebSocket reassembly (rn_conn.c) and request bodies
 * (rn_server.c). Pure C: the fuzz harnesses compile it as it is.
 */
#include <stdlib.h>

#include "rn.h"

/* The capacity rn__grow would give a buffer of capacity `cap` asked to hold
 * `need` bytes (callers check a memory budget with it before growing). */
size_t rn__grow_cap(size_t cap, size_t need, size_t initial, size_t max) {
  size_t ncap;
  if (need <= cap)
    return cap;
  ncap = cap ? cap : initial;
  while (ncap < need)
    ncap *= 2;
  if (max && ncap > max)
    ncap = max < need ? need : max;
  return ncap;
}

/* Grows *buf (capacity *cap, first allocation `initial`) by doubling until
 * it holds `need` bytes, but to no more than `max` (0: no cap) unless `need`
 * itself is larger. Returns 0, or -1 when out of memory (*buf intact). */
int rn__grow(unsigned char **buf, size_t *cap, size_t need, size_t initial, size_t max) {
  size_t ncap;
  unsigned char *n;
  if (need <= *cap)
    return 0;
  ncap = rn__grow_cap(*cap, need, initial, max);
  n = (unsigned char *)realloc(*buf, ncap);
  if (!n)
    return -1;
  *buf = n;
  *cap = ncap;
  return 0;
}
