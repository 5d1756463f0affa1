/*
 * relaynet core: checking TLS certificate, key and CA files before they are
 * handed to libwebsockets.
 *
 * lws reports a bad file only in its log and then fails the vhost as a
 * whole, which relaynet could not tell from a port already in use. So the
 * files are loaded here first, with OpenSSL, into a throw-away context, and
 * a failure names the file and OpenSSL's reason (ETLS). lws then loads
 * them again for real.
 */
#include "rn.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

/* Writes "what FILE: reason" into err, with OpenSSL's first queued error as
 * the reason (or `fallback`), and clears OpenSSL's error queue. */
static int rn__tls_err(char *err, size_t errlen, const char *what, const char *file,
                       const char *fallback) {
  unsigned long e = ERR_get_error();
  char reason[160];
  if (e)
    ERR_error_string_n(e, reason, sizeof reason);
  else
    snprintf(reason, sizeof reason, "%s", fallback);
  ERR_clear_error();
  snprintf(err, errlen, "%s %s: %s", what, file, reason);
  return -1;
}

/* Fails early, with the file's name, when it cannot be opened at all. */
static int rn__tls_readable(const char *file, const char *what, char *err, size_t errlen) {
  FILE *f = fopen(file, "rb");
  if (!f) {
    snprintf(err, errlen, "cannot read the %s %s", what, file);
    return -1;
  }
  fclose(f);
  return 0;
}

/* 0 when cert (a PEM chain), key (its private key, PEM) and the optional CA
 * file load and the key matches the certificate; otherwise -1 with a
 * message in err. */
int rn__tls_check_server(const char *cert, const char *key, const char *ca,
                         char *err, size_t errlen) {
  SSL_CTX *ctx;
  int rc = -1;
  if (rn__tls_readable(cert, "certificate file", err, errlen) < 0 ||
      rn__tls_readable(key, "key file", err, errlen) < 0 ||
      (ca && rn__tls_readable(ca, "CA file", err, errlen) < 0))
    return -1;
  ERR_clear_error();
  ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) {
    snprintf(err, errlen, "cannot create a TLS context");
    return -1;
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
    rn__tls_err(err, errlen, "bad certificate file", cert, "not a PEM certificate");
  else if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
    rn__tls_err(err, errlen, "bad key file", key, "not a PEM private key");
  else if (SSL_CTX_check_private_key(ctx) != 1)
    rn__tls_err(err, errlen, "the key does not match the certificate in", cert, "mismatch");
  else if (ca && SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
    rn__tls_err(err, errlen, "bad CA file", ca, "no PEM certificate");
  else
    rc = 0;
  SSL_CTX_free(ctx);
  return rc;
}

/* 0 when the CA file holds at least one PEM certificate. */
int rn__tls_check_ca(const char *ca, char *err, size_t errlen) {
  SSL_CTX *ctx;
  int rc = 0;
  if (rn__tls_readable(ca, "CA file", err, errlen) < 0)
    return -1;
  ERR_clear_error();
  ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) {
    snprintf(err, errlen, "cannot create a TLS context");
    return -1;
  }
  if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
    rc = rn__tls_err(err, errlen, "bad CA file", ca, "no PEM certificate");
  SSL_CTX_free(ctx);
  return rc;
}
