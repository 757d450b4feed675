/* A small JSON tree for gateway request bodies (GATEWAY §1, §3), built from
 * yajl's callback parser. Unlike the payload codec (lua_json.c) it needs no
 * Lua state and keeps what SQL binding needs: the exact text of every number
 * literal and whether it was written as an integer. Plain C over libc and
 * yajl; see docs/gateway-compiler.md. Not installed. */
#ifndef ATHENA_GW_JSON_H
#define ATHENA_GW_JSON_H

#include <stddef.h>
#include <stdint.h>

/* Deepest nesting accepted; the outermost container is depth 1 (GATEWAY §1:
 * "nested deeper than 64" is invalid_json). */
#define ATH_GJ_MAX_DEPTH 64

/* ----------------------------------------------------------------- arena */

/* Bump allocator: everything a document or a plan holds is freed at once,
 * so nothing is ever freed node by node (or recursively). */
typedef struct ath_gw_chunk_s ath_gw_chunk_t;
typedef struct {
  ath_gw_chunk_t* head; /* newest chunk first */
} ath_gw_arena_t;

/* Returns `n` bytes aligned for any field we store, or NULL when out of
 * memory. The memory lives until ath__gw_arena_free(). Thread: the owner's. */
void* ath__gw_arena_alloc(ath_gw_arena_t* a, size_t n);
/* Copies `n` bytes of `s` and a NUL into the arena; NULL when out of memory. */
char* ath__gw_arena_strdup(ath_gw_arena_t* a, const char* s, size_t n);
/* Frees every chunk; the arena is empty and reusable afterwards. */
void ath__gw_arena_free(ath_gw_arena_t* a);

/* ---------------------------------------------------------------- buffer */

/* A growable string whose failure is sticky: appends after an allocation
 * failure do nothing and `oom` stays set, so a builder checks once at the
 * end. `data` is NUL-terminated whenever it is not NULL. */
typedef struct {
  char* data;
  size_t len;
  size_t cap;
  int oom;
} ath_gw_buf_t;

void ath__gw_buf_put(ath_gw_buf_t* b, const char* s, size_t n);
void ath__gw_buf_puts(ath_gw_buf_t* b, const char* s);
void ath__gw_buf_putc(ath_gw_buf_t* b, char c);
/* Frees the memory and zeroes the buffer. */
void ath__gw_buf_free(ath_gw_buf_t* b);

/* ------------------------------------------------------------------ tree */

typedef enum {
  ATH_GJ_NULL,
  ATH_GJ_BOOL,
  ATH_GJ_NUMBER,
  ATH_GJ_STRING,
  ATH_GJ_ARRAY,
  ATH_GJ_OBJECT
} ath_gj_type_t;

typedef struct ath_gj_s ath_gj_t;
struct ath_gj_s {
  ath_gj_type_t type;
  int boolean;      /* ATH_GJ_BOOL: 0 or 1 */
  int integral;     /* ATH_GJ_NUMBER: written without '.' or exponent */
  const char* str;  /* STRING: the decoded bytes; NUMBER: the literal text;
                       NUL-terminated (a string may also hold NULs) */
  size_t len;
  const char* key;  /* the member's key when the parent is an object */
  size_t klen;
  ath_gj_t* first;  /* ARRAY, OBJECT: children in document order */
  ath_gj_t* last;
  ath_gj_t* next;   /* the next sibling */
  size_t count;     /* number of children (duplicate keys included) */
};

/* A parsed document: the tree and the arena holding it. */
typedef struct {
  ath_gw_arena_t arena;
  ath_gj_t* root;
} ath_gj_doc_t;

/* Parses `len` bytes of JSON into a new document. An empty or all-blank text
 * is `{}` (GATEWAY §1). Returns 0 and sets *out, ATH_EINVAL when the text is
 * not one JSON value, holds invalid UTF-8 (utf8.h: bytes that are not
 * strict RFC 3629 UTF-8, or a lone surrogate escape) or nests deeper than
 * ATH_GJ_MAX_DEPTH (the parse stops at the first level too deep, so depth
 * costs neither stack nor memory), or ATH_ENOMEM. On failure *out is NULL
 * and `*err_at` (when not NULL) is the byte offset where parsing stopped.
 * Ownership: the caller frees the document with ath__gj_free(); `text` is
 * not kept. Thread: any; no global state. */
int ath__gj_parse(const char* text, size_t len, ath_gj_doc_t** out,
                  size_t* err_at);
/* Frees a document from ath__gj_parse(); NULL is a no-op. */
void ath__gj_free(ath_gj_doc_t* doc);

/* The value of member `key` of `obj`, or NULL if `obj` is not an object or
 * has no such member. Duplicate keys: the last one wins. A member whose
 * value is JSON null is returned (callers decide whether null is absent). */
const ath_gj_t* ath__gj_get(const ath_gj_t* obj, const char* key);
/* As ath__gj_get(), but a null value counts as absent (GATEWAY §3). */
const ath_gj_t* ath__gj_field(const ath_gj_t* obj, const char* key);

/* Marks in `win[i]` (an array of obj->count bytes) whether the i-th member of
 * object `obj` is the one that counts for its key: the last duplicate. O(n)
 * with a temporary hash table. Returns 0, or ATH_ENOMEM. */
int ath__gj_winners(const ath_gj_t* obj, unsigned char* win);

/* Appends `v` as compact JSON (numbers as written, strings re-escaped).
 * Recursion is bounded by the document's depth (ATH_GJ_MAX_DEPTH). */
void ath__gj_write(ath_gw_buf_t* b, const ath_gj_t* v);

/* Whether two values are the same JSON value: numbers compare by value
 * (1, 1.0 and 1e0 are equal), strings byte-wise, objects by their effective
 * members (last duplicate wins), arrays item by item. */
int ath__gj_equal(const ath_gj_t* a, const ath_gj_t* b);

/* strtod() for JSON's '.' whatever LC_NUMERIC says (a host may have called
 * setlocale, e.g. through Lua's os.setlocale): like Lua's l_str2d, when the
 * conversion stops at a '.', it retries with the locale's decimal point.
 * Thread: any (reads localeconv(), as Lua does). */
double ath__gw_strtod(const char* s, char** end);

#endif
