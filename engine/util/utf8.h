/* Strict UTF-8 (RFC 3629) for the two JSON decoders: the payload codec
 * (lua_json.c) and the gateway's request tree (gw_json.c). Both check a
 * text with ath__json_text_check() before yajl parses it, so they accept
 * exactly the same strings, and a string either decodes to is well-formed
 * UTF-8. Plain C, header only. Not installed. */
#ifndef ATHENA_UTF8_H
#define ATHENA_UTF8_H

#include <stddef.h>

#define ATH_UTF8_CONT(c) (((c) & 0xC0) == 0x80)

/* The length of the well-formed UTF-8 sequence at p (RFC 3629: no overlong
 * forms, surrogates or code points above U+10FFFF; a sequence cut short by
 * `end` is not one), or 0. */
static inline size_t ath__utf8_seq(const unsigned char* p, const unsigned char* end) {
  unsigned c = p[0];
  size_t left = (size_t)(end - p);
  if (c < 0x80)
    return 1;
  if (c < 0xC2) /* a continuation byte, or an overlong 2-byte lead */
    return 0;
  if (c < 0xE0)
    return left >= 2 && ATH_UTF8_CONT(p[1]) ? 2 : 0;
  if (c < 0xF0) {
    if (left < 3 || !ATH_UTF8_CONT(p[1]) || !ATH_UTF8_CONT(p[2]))
      return 0;
    if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] > 0x9F))
      return 0; /* overlong, or a surrogate */
    return 3;
  }
  if (c < 0xF5) {
    if (left < 4 || !ATH_UTF8_CONT(p[1]) || !ATH_UTF8_CONT(p[2]) || !ATH_UTF8_CONT(p[3]))
      return 0;
    if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] > 0x8F))
      return 0; /* overlong, or above U+10FFFF */
    return 4;
  }
  return 0;
}

/* The value of 4 hex digits at p, or -1. */
static inline long ath__hex4(const unsigned char* p) {
  long v = 0;
  for (int i = 0; i < 4; i++) {
    unsigned c = p[i];
    int d = c >= '0' && c <= '9' ? (int)(c - '0')
            : c >= 'a' && c <= 'f' ? (int)(c - 'a' + 10)
            : c >= 'A' && c <= 'F' ? (int)(c - 'A' + 10)
                                   : -1;
    if (d < 0)
      return -1;
    v = v * 16 + d;
  }
  return v;
}

/* Checks the encoding of a JSON text, not its grammar (yajl's business):
 * every byte is part of well-formed UTF-8, and every \u escape names a
 * Unicode scalar value: a high surrogate escape must be followed by a low
 * one (the pair is one code point), and a lone surrogate escape (\ud800,
 * \udc00, \ud800\u0041) is refused. yajl would otherwise turn a lone high
 * surrogate into "?", pair it with any next escape, and pass a lone low one
 * through as invalid UTF-8. A backslash is legal only inside a string, so
 * "\\" followed by "u" outside one is a grammar error yajl reports anyway.
 * Returns 1, or 0 with *bad_at (when not NULL) at the offending byte. */
static inline int ath__json_text_check(const char* text, size_t n, size_t* bad_at) {
  const unsigned char* s = (const unsigned char*)text;
  const unsigned char* end = s + n;
  const unsigned char* p = s;
  while (p < end) {
    if (*p == '\\') {
      if (end - p >= 6 && p[1] == 'u') {
        long v = ath__hex4(p + 2);
        if (v >= 0xD800 && v <= 0xDBFF) {
          long lo = end - p >= 12 && p[6] == '\\' && p[7] == 'u' ? ath__hex4(p + 8) : -1;
          if (lo < 0xDC00 || lo > 0xDFFF)
            goto bad;
          p += 12;
          continue;
        }
        if (v >= 0xDC00 && v <= 0xDFFF)
          goto bad;
      }
      p += end - p >= 2 ? 2 : 1; /* the escaped character is ASCII or yajl refuses it */
      continue;
    }
    size_t k = ath__utf8_seq(p, end);
    if (k == 0)
      goto bad;
    p += k;
  }
  return 1;
bad:
  if (bad_at != NULL)
    *bad_at = (size_t)(p - s);
  return 0;
}

#endif
