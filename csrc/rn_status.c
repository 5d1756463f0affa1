/*
 * relaynet core: fixing up the status line and headers lws writes for an
 * HTTP response (rn_http.c), where lws 4.1.6 departs from RFC 9110.
 */
#include "rn.h"

#include <string.h>
#include <strings.h>

/* The reason phrase of a status (RFC 9110 15), for those lws 4.1.6 writes
 * without one ("HTTP/1.1 201 "). NULL when unknown: the line keeps the
 * code alone, which is still valid. */
static const char *rn__reason(int status) {
  switch (status) {
  case 101: return "Switching Protocols";
  case 201: return "Created";
  case 202: return "Accepted";
  case 203: return "Non-Authoritative Information";
  case 204: return "No Content";
  case 205: return "Reset Content";
  case 206: return "Partial Content";
  case 300: return "Multiple Choices";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 418: return "I'm a teapot";
  case 421: return "Misdirected Request";
  case 422: return "Unprocessable Content";
  case 423: return "Locked";
  case 424: return "Failed Dependency";
  case 425: return "Too Early";
  case 426: return "Upgrade Required";
  case 428: return "Precondition Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 451: return "Unavailable For Legal Reasons";
  case 506: return "Variant Also Negotiates";
  case 507: return "Insufficient Storage";
  case 508: return "Loop Detected";
  case 511: return "Network Authentication Required";
  default: return NULL;
  }
}

/* lws writes the status line from its own table: "HTTP/1.1 201 " for the
 * codes it lacks, and "Redirect" for every 3xx. Rewrites the line between
 * start and *p with rn__reason's phrase when there is one, moving the
 * headers after it. Returns 0, or -1 when the buffer is too small. */
int rn__fix_status_line(unsigned char *start, unsigned char **p, unsigned char *end, int status) {
  const char *reason = rn__reason(status);
  unsigned char *eol, *sp;
  size_t have, want;
  if (!reason)
    return 0;
  eol = (unsigned char *)memchr(start, '\r', (size_t)(*p - start));
  sp = eol ? (unsigned char *)memchr(start, ' ', (size_t)(eol - start)) : NULL;
  if (!sp || eol - sp < 5)
    return 0;
  sp += 5; /* after " NNN " */
  have = (size_t)(eol - sp);
  want = strlen(reason);
  if (want > have && (size_t)(end - *p) < want - have)
    return -1;
  memmove(sp + want, eol, (size_t)(*p - eol));
  memcpy(sp, reason, want);
  *p = *p + want - have;
  return 0;
}

/* A 204 or 304 must carry no Content-Length (RFC 9110 8.6); lws adds one
 * anyway. Removes that line from the headers between start and *p (lws
 * keeps its own count, so the transaction still ends as it should). */
void rn__drop_content_length(unsigned char *start, unsigned char **p) {
  static const char cl[] = "\r\ncontent-length:";
  unsigned char *q = start, *eol;
  size_t n = (size_t)(*p - start);
  for (q = start; q + sizeof cl - 1 <= *p; q++)
    if (!strncasecmp((const char *)q, cl, sizeof cl - 1))
      break;
  if (q + sizeof cl - 1 > *p)
    return;
  eol = (unsigned char *)memchr(q + 2, '\r', (size_t)(*p - (q + 2)));
  if (!eol)
    return;
  memmove(q, eol, (size_t)(start + n - eol));
  *p -= eol - q;
}
