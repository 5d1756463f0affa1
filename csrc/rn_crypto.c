/*
 * relaynet core: the cryptographic primitives the mesh's authentication
 * uses, all from OpenSSL's libcrypto (nothing here is hand-written crypto):
 * random bytes, SHA-256, HMAC-SHA256, a constant-time comparison, Ed25519
 * keys (generate, load and save as PKCS#8 PEM, sign, verify), base64, and
 * the TLS exporter value of a connection (channel binding).
 *
 * Keys cross into Lua as raw strings: a private key is its 32-byte seed,
 * a public key its 32 bytes, a signature 64 bytes. Misuse (a wrong type or
 * length) raises; operational failures (a key file that cannot be read)
 * return nil, "EKEY: message", "EKEY" (secrets: "EINVAL").
 */
#include "rn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#define RN_ED25519_LEN 32
#define RN_SIG_LEN 64

static const char *rn__checklen(lua_State *L, int idx, size_t want, const char *what) {
  size_t len;
  const char *s = luaL_checklstring(L, idx, &len);
  if (len != want)
    luaL_argerror(L, idx, lua_pushfstring(L, "%s must be %d bytes", what, (int)want));
  return s;
}

/* core.random(n) -> n bytes from the CSPRNG (1 <= n <= 1024). */
static int rn_random(lua_State *L) {
  unsigned char buf[1024];
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= (lua_Integer)sizeof buf, 1, "must be 1..1024");
  if (RAND_bytes(buf, (int)n) != 1)
    return luaL_error(L, "relaynet: the random generator failed");
  lua_pushlstring(L, (const char *)buf, (size_t)n);
  return 1;
}

/* core.sha256(s) -> 32 bytes. */
static int rn_sha256(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  unsigned char md[32];
  unsigned int mdlen = sizeof md;
  if (EVP_Digest(s, len, md, &mdlen, EVP_sha256(), NULL) != 1)
    return luaL_error(L, "relaynet: SHA-256 failed");
  lua_pushlstring(L, (const char *)md, mdlen);
  return 1;
}

/* core.hmac_sha256(key, msg) -> 32 bytes. */
static int rn_hmac_sha256(lua_State *L) {
  size_t klen, mlen;
  const char *k = luaL_checklstring(L, 1, &klen);
  const char *m = luaL_checklstring(L, 2, &mlen);
  unsigned char md[32];
  unsigned int mdlen = sizeof md;
  if (!HMAC(EVP_sha256(), k, (int)klen, (const unsigned char *)m, mlen, md, &mdlen))
    return luaL_error(L, "relaynet: HMAC-SHA256 failed");
  lua_pushlstring(L, (const char *)md, mdlen);
  return 1;
}

/* core.equal(a, b) -> boolean, in time that depends on the length only. */
static int rn_equal(lua_State *L) {
  size_t la, lb;
  const char *a = luaL_checklstring(L, 1, &la);
  const char *b = luaL_checklstring(L, 2, &lb);
  lua_pushboolean(L, la == lb && CRYPTO_memcmp(a, b, la) == 0);
  return 1;
}

/* Pushes the raw public key of an Ed25519 key. */
static void rn__push_pub(lua_State *L, EVP_PKEY *k) {
  unsigned char pub[RN_ED25519_LEN];
  size_t len = sizeof pub;
  if (EVP_PKEY_get_raw_public_key(k, pub, &len) != 1 || len != sizeof pub)
    luaL_error(L, "relaynet: cannot read an Ed25519 public key");
  lua_pushlstring(L, (const char *)pub, len);
}

static EVP_PKEY *rn__priv(lua_State *L, int idx) {
  const char *seed = rn__checklen(L, idx, RN_ED25519_LEN, "an Ed25519 private key");
  EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, (const unsigned char *)seed,
                                             RN_ED25519_LEN);
  if (!k)
    luaL_error(L, "relaynet: cannot use an Ed25519 private key");
  return k;
}

/* Pushes the 32-byte seed and the public key of k; frees k. */
static int rn__push_pair(lua_State *L, EVP_PKEY *k) {
  unsigned char seed[RN_ED25519_LEN];
  size_t len = sizeof seed;
  if (EVP_PKEY_get_raw_private_key(k, seed, &len) != 1 || len != sizeof seed) {
    EVP_PKEY_free(k);
    return luaL_error(L, "relaynet: cannot read an Ed25519 private key");
  }
  lua_pushlstring(L, (const char *)seed, len);
  OPENSSL_cleanse(seed, sizeof seed);
  rn__push_pub(L, k);
  EVP_PKEY_free(k);
  return 2;
}

/* core.ed25519_keygen() -> private (32), public (32). */
static int rn_ed25519_keygen(lua_State *L) {
  EVP_PKEY *k = NULL;
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
  if (!ctx || EVP_PKEY_keygen_init(ctx) != 1 || EVP_PKEY_keygen(ctx, &k) != 1) {
    EVP_PKEY_CTX_free(ctx);
    return luaL_error(L, "relaynet: Ed25519 key generation failed");
  }
  EVP_PKEY_CTX_free(ctx);
  return rn__push_pair(L, k);
}

/* core.ed25519_public(private) -> public. */
static int rn_ed25519_public(lua_State *L) {
  EVP_PKEY *k = rn__priv(L, 1);
  rn__push_pub(L, k);
  EVP_PKEY_free(k);
  return 1;
}

/* core.ed25519_sign(private, msg) -> signature (64). */
static int rn_ed25519_sign(lua_State *L) {
  EVP_PKEY *k = rn__priv(L, 1);
  size_t mlen, slen = RN_SIG_LEN;
  const char *m = luaL_checklstring(L, 2, &mlen);
  unsigned char sig[RN_SIG_LEN];
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  int ok = md && EVP_DigestSignInit(md, NULL, NULL, NULL, k) == 1 &&
           EVP_DigestSign(md, sig, &slen, (const unsigned char *)m, mlen) == 1;
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(k);
  if (!ok)
    return luaL_error(L, "relaynet: Ed25519 signing failed");
  lua_pushlstring(L, (const char *)sig, slen);
  return 1;
}

/* core.ed25519_verify(public, msg, signature) -> boolean. A public key or
 * signature of the wrong length is a bad signature, not misuse: both come
 * from the network. */
static int rn_ed25519_verify(lua_State *L) {
  size_t plen, mlen, slen;
  const char *pub = luaL_checklstring(L, 1, &plen);
  const char *m = luaL_checklstring(L, 2, &mlen);
  const char *sig = luaL_checklstring(L, 3, &slen);
  EVP_PKEY *k;
  EVP_MD_CTX *md;
  int ok = 0;
  if (plen != RN_ED25519_LEN || slen != RN_SIG_LEN) {
    lua_pushboolean(L, 0);
    return 1;
  }
  k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, (const unsigned char *)pub, plen);
  md = EVP_MD_CTX_new();
  if (k && md && EVP_DigestVerifyInit(md, NULL, NULL, NULL, k) == 1)
    ok = EVP_DigestVerify(md, (const unsigned char *)sig, slen, (const unsigned char *)m, mlen) == 1;
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(k);
  ERR_clear_error();
  lua_pushboolean(L, ok);
  return 1;
}

/* core.key_load(path) -> private, public | nil, "EKEY: ...", "EKEY".
 * The file is a PKCS#8 PEM Ed25519 private key (`relaynet keygen`, or
 * `openssl genpkey -algorithm ed25519`); one that others may read or write
 * is refused, as ssh refuses such keys. */
static int rn_key_load(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  EVP_PKEY *k;
  FILE *f = fopen(path, "rb");
  if (!f)
    return rn__fail(L, "EKEY", "cannot read the key file %s: %s", path, strerror(errno));
  if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077)) {
    fclose(f);
    return rn__fail(L, "EKEY", "the key file %s may be read by others (chmod 600 it)", path);
  }
  k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
  fclose(f);
  ERR_clear_error();
  if (!k)
    return rn__fail(L, "EKEY", "%s is not a PEM private key", path);
  if (EVP_PKEY_get_id(k) != EVP_PKEY_ED25519) {
    EVP_PKEY_free(k);
    return rn__fail(L, "EKEY", "%s is not an Ed25519 key", path);
  }
  return rn__push_pair(L, k);
}

/* core.key_write(path, private) -> true | nil, "EKEY: ...", "EKEY". Creates
 * the file with mode 0600; an existing file is never overwritten. */
static int rn_key_write(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  EVP_PKEY *k = rn__priv(L, 2);
  FILE *f;
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600), ok;
  if (fd < 0) {
    EVP_PKEY_free(k);
    return rn__fail(L, "EKEY", "cannot create the key file %s: %s", path, strerror(errno));
  }
  f = fdopen(fd, "wb");
  ok = f && PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) == 1;
  EVP_PKEY_free(k);
  if (f)
    ok = (fclose(f) == 0) && ok;
  else
    close(fd);
  if (!ok) {
    unlink(path);
    return rn__fail(L, "EKEY", "cannot write the key file %s", path);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* core.read_private(path) -> text | nil, "EINVAL: ...", "EINVAL". Reads a
 * secret (a mesh secret, a JSON-RPC token) of at most 64 KiB. A file that
 * group or others may read or write is refused, as key_load refuses such
 * keys: the mode is checked on the opened file, so it cannot change
 * between the check and the read. */
static int rn_read_private(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char buf[65536 + 1];
  struct stat st;
  size_t n;
  FILE *f = fopen(path, "rb");
  if (!f)
    return rn__fail(L, "EINVAL", "cannot read the secret file %s: %s", path, strerror(errno));
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    fclose(f);
    return rn__fail(L, "EINVAL", "the secret file %s is not a regular file", path);
  }
  if (st.st_mode & 077) {
    fclose(f);
    return rn__fail(L, "EINVAL", "the secret file %s may be read by others (chmod 600 it)", path);
  }
  n = fread(buf, 1, sizeof buf, f);
  if (ferror(f)) {
    fclose(f);
    return rn__fail(L, "EINVAL", "cannot read the secret file %s", path);
  }
  fclose(f);
  if (n > 65536)
    return rn__fail(L, "EINVAL", "the secret file %s is larger than 64 KiB", path);
  lua_pushlstring(L, buf, n);
  OPENSSL_cleanse(buf, n);
  return 1;
}

/* core.b64encode(s) -> standard base64 with padding. */
static int rn_b64encode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  char *out;
  int n;
  luaL_argcheck(L, len <= (1u << 20), 1, "at most 1 MiB");
  out = luaL_buffinitsize(L, &b, 4 * ((len + 2) / 3) + 1);
  n = EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)s, (int)len);
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* core.b64decode(s) -> bytes | nil when s is not canonical padded base64. */
static int rn_b64decode(lua_State *L) {
  size_t len, pad = 0, n, i;
  const char *s = luaL_checklstring(L, 1, &len);
  unsigned char out[3 * 1024];
  if (len == 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  if (len % 4 || len / 4 * 3 > sizeof out)
    return 0;
  for (i = 0; i < len; i++) {
    char c = s[i];
    int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
             c == '/' || (c == '=' && i >= len - 2);
    if (!ok || (i == len - 1 && s[len - 2] == '=' && c != '='))
      return 0;
  }
  if (s[len - 1] == '=')
    pad = s[len - 2] == '=' ? 2 : 1;
  if (EVP_DecodeBlock(out, (const unsigned char *)s, (int)len) < 0)
    return 0;
  n = len / 4 * 3 - pad;
  lua_pushlstring(L, (const char *)out, n);
  return 1;
}

/* conn:tls_binding() -> 32 bytes | nil: the TLS exporter value (RFC 5705 /
 * 8446 7.5, label "EXPORTER-relaynet-mesh") of a connection that runs over
 * TLS. Both ends of one TLS connection get the same value and no other
 * connection does, so a proof that covers it cannot be relayed elsewhere. */
int rn__conn_tls_binding(lua_State *L, rn_conn *c) {
  static const char label[] = "EXPORTER-relaynet-mesh";
  unsigned char out[32];
  SSL *ssl = c->wsi ? lws_get_ssl(c->wsi) : NULL;
  if (!ssl || SSL_export_keying_material(ssl, out, sizeof out, label, sizeof label - 1, NULL, 0, 0) != 1) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlstring(L, (const char *)out, sizeof out);
  return 1;
}

void rn__crypto_open_lua(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"random", rn_random},
    {"sha256", rn_sha256},
    {"hmac_sha256", rn_hmac_sha256},
    {"equal", rn_equal},
    {"ed25519_keygen", rn_ed25519_keygen},
    {"ed25519_public", rn_ed25519_public},
    {"ed25519_sign", rn_ed25519_sign},
    {"ed25519_verify", rn_ed25519_verify},
    {"key_load", rn_key_load},
    {"key_write", rn_key_write},
    {"read_private", rn_read_private},
    {"b64encode", rn_b64encode},
    {"b64decode", rn_b64decode},
    {NULL, NULL}};
  luaL_setfuncs(L, funcs, 0);
}
