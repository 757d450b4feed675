/* Small helpers shared by the engine files: the error map and byte buffers. */
#include <stdlib.h>
#include <string.h>

#include "athena.h"
#include "util.h"

/* ------------------------------------------------------------------ errors */

const char* ath_err_name(int err) {
  switch (err) {
#define XX(name, _) \
  case ATH_##name:  \
    return #name;
    ATH_ERRNO_MAP(XX)
#undef XX
  }
  return "EUNKNOWN";
}

const char* ath_strerror(int err) {
  switch (err) {
#define XX(name, msg) \
  case ATH_##name:    \
    return msg;
    ATH_ERRNO_MAP(XX)
#undef XX
  }
  return "unknown error";
}

int ath_err_code(const char* name) {
  if (name == NULL)
    return 0;
#define XX(code, _)               \
  if (strcmp(name, #code) == 0) \
    return ATH_##code;
  ATH_ERRNO_MAP(XX)
#undef XX
  return 0;
}

/* ----------------------------------------------------------------- buffers */

/* The first allocation; later ones double, so appending n bytes one at a time
 * costs O(n) copies in all. */
#define ATH__BUF_MIN 64

char* ath__fmt_i64(char* end, int64_t v) {
  /* two digits per division: events carry 13-digit times, at every step */
  static const char pairs[201] = "00010203040506070809101112131415161718192021222324"
                                 "25262728293031323334353637383940414243444546474849"
                                 "50515253545556575859606162636465666768697071727374"
                                 "75767778798081828384858687888990919293949596979899";
  uint64_t u = v < 0 ? 0u - (uint64_t)v : (uint64_t)v;
  char* p = end;
  while (u >= 100) {
    const char* d = pairs + (u % 100) * 2;
    u /= 100;
    *--p = d[1];
    *--p = d[0];
  }
  if (u >= 10) {
    *--p = pairs[u * 2 + 1];
    *--p = pairs[u * 2];
  } else {
    *--p = (char)('0' + u);
  }
  if (v < 0)
    *--p = '-';
  return p;
}

int ath__buf_i64(ath_buf_t* b, int64_t v) {
  char num[24];
  char* p = ath__fmt_i64(num + sizeof(num), v);
  return ath__buf_put(b, p, (size_t)(num + sizeof(num) - p));
}

int ath__buf_append(ath_buf_t* b, const char* s, size_t n) {
  /* Invariant: cap == 0 or len < cap, so the NUL always has a byte. */
  if (n >= b->cap - b->len) {
    size_t need, cap;
    char* p;
    if (n > SIZE_MAX - 1 - b->len)
      return ATH_ENOMEM;
    need = b->len + n + 1;
    cap = b->cap != 0 ? b->cap : ATH__BUF_MIN;
    while (cap < need)
      cap = cap <= SIZE_MAX / 2 ? cap * 2 : need;
    p = realloc(b->data, cap);
    if (p == NULL)
      return ATH_ENOMEM;
    b->data = p;
    b->cap = cap;
  }
  if (n != 0)
    memcpy(b->data + b->len, s, n); /* s may be NULL when n is 0 */
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

void ath__buf_free(ath_buf_t* b) {
  free(b->data);
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

char* ath__memdup(const char* p, size_t n) {
  if (p == NULL)
    return NULL;
  char* c = malloc(n + 1);
  if (c != NULL) {
    memcpy(c, p, n);
    c[n] = '\0';
  }
  return c;
}

/* ------------------------------------------------------------ JSON output */

void ath__buf_json_str(ath_buf_t* b, const char* s) {
  static const char hex[] = "0123456789abcdef";
  ath__buf_append(b, "\"", 1);
  for (const char* p = s; p && *p; p++) {
    unsigned char c = (unsigned char)*p;
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      ath__buf_append(b, e, 2);
    } else if (c < 0x20) {
      char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      ath__buf_append(b, e, 6);
    } else {
      ath__buf_append(b, (const char*)&c, 1);
    }
  }
  ath__buf_append(b, "\"", 1);
}

char** ath__strv_dup(const char* const* v) {
  if (v == NULL)
    return NULL;
  size_t n = 0;
  while (v[n] != NULL)
    n++;
  char** out = calloc(n + 1, sizeof(char*));
  if (out == NULL)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    if ((out[i] = ath__memdup(v[i], strlen(v[i]))) == NULL) {
      while (i > 0)
        free(out[--i]);
      free(out);
      return NULL;
    }
  }
  return out;
}

void ath__strv_free(char** v) {
  if (v == NULL)
    return;
  for (char** p = v; *p != NULL; p++)
    free(*p);
  free(v);
}
