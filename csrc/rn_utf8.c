/*
 * relaynet core: UTF-8 validation (RFC 3629), for WebSocket text messages,
 * close reasons and the JSON decoder. Depends on nothing else in the core.
 */
#include "rn.h"

#include <string.h>
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
