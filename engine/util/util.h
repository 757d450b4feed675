/* The engine's bottom layer: byte buffers, strings, clocks, ids and
 * hashes. Depends on nothing above it (no Lua, no libuv, no world).
 * Not installed. */
#ifndef ATHENA_UTIL_H
#define ATHENA_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include "athena.h"

/* util.c ------------------------------------------------------------------ */

/* A growable byte buffer; data is NUL-terminated after every append. */
typedef struct {
  char* data;
  size_t len;
  size_t cap;
} ath_buf_t;

/* Appends `n` bytes. Returns 0 or ATH_ENOMEM (the buffer is unchanged). */
int ath__buf_append(ath_buf_t* b, const char* s, size_t n);
/* Copies n bytes of p and a NUL into new memory; NULL for NULL p or when
 * out of memory. */
char* ath__memdup(const char* p, size_t n);
/* Appends a string literal. */
#define ath__buf_lit(b, lit) ath__buf_append((b), (lit), sizeof(lit) - 1)
/* ath__buf_append, inline while the bytes fit: for writers that append
 * many small pieces (a gateway answer's values), where the call was a
 * tenth of the answer's cost. */
static inline int ath__buf_put(ath_buf_t* b, const char* s, size_t n) {
  if (n < b->cap - b->len) { /* cap 0 (no data yet) takes the call */
    __builtin_memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
  }
  return ath__buf_append(b, s, n);
}
#define ath__buf_putlit(b, lit) ath__buf_put((b), (lit), sizeof(lit) - 1)
/* Appends `s` (UTF-8) as a JSON string literal, quotes included. */
void ath__buf_json_str(ath_buf_t* b, const char* s);
/* Formats v in decimal ending at `end` (at most 20 characters before it);
 * returns the first character. */
char* ath__fmt_i64(char* end, int64_t v);
/* Appends v in decimal. Returns 0 or ATH_ENOMEM. */
int ath__buf_i64(ath_buf_t* b, int64_t v);
/* Frees the buffer's memory and zeroes it. */
void ath__buf_free(ath_buf_t* b);
/* A copy of a NULL-terminated string array (NULL for NULL, and when out of
 * memory), and its release (NULL is fine). */
char** ath__strv_dup(const char* const* v);
void ath__strv_free(char** v);

/* clock.c ----------------------------------------------------------------- */

/* Wall-clock epoch milliseconds and monotonic nanoseconds. Thread: any. */
int64_t ath__now_ms(void);
uint64_t ath__mono_ns(void);
/* Writes a random UUID v4 (36 chars + NUL) into out. Thread: any. */
void ath__uuid4(char out[37]);
void ath__uuid7(char out[37]);
/* A uniform double in [0, 1) from the thread's generator. */
double ath__random01(void);
/* FNV-1a over a NUL-terminated string. */
uint64_t ath__hash_str(const char* s);
uint64_t ath__hash_id(const char* s); /* in-process tables: faster */

#endif
