/* The HTTP subsystem: the libcurl client tasks use (http_client.c) and
 * the operations surface served on the engine loop (http.c). Not
 * installed. */
#ifndef ATHENA_HTTP_H
#define ATHENA_HTTP_H

#include "runtime.h"

typedef struct ath_http_s ath_http_t;

/* http_client.c: HTTP requests on libcurl --------------------------------- */

typedef struct ath_curlm_s ath_curlm_t;
typedef struct ath_http_req_s {
  void* easy;            /* CURL* */
  struct curl_slist* headers;
  char* req_body;
  ath_buf_t body;        /* the response body */
  size_t max_body;       /* 64 MiB: past it the request fails EMSGSIZE */
  int result;            /* CURLcode */
  int done;
  int in_multi;
  ath_slot_t* slot;      /* the task waiting on it, or NULL */
  char errbuf[256];
} ath_http_req_t;

/* Prepares a request (headers are "Name: value" lines, NULL-terminated).
 * Returns 0, ATH_EINVAL (a URL that is not http(s)) or ATH_ENOMEM. */
int ath__http_prepare(ath_http_req_t* r, const char* method, const char* url,
                      const char* const* headers, const char* body, size_t blen,
                      int64_t timeout_ms, char* err, size_t errlen);
/* Trusts the CA certificates in `path` (PEM) for this request. */
void ath__http_set_cafile(ath_http_req_t* r, const char* path);
/* Runs it to the end on the calling thread (blocking). */
int ath__http_perform(ath_http_req_t* r);
void ath__http_free(ath_http_req_t* r);
/* After it is done: the error code ("ETIMEDOUT", "ECONNREFUSED", ...) or
 * NULL, its message, the status, and the response headers one by one. */
const char* ath__http_error_code(const ath_http_req_t* r);
const char* ath__http_error_message(const ath_http_req_t* r);
long ath__http_status(const ath_http_req_t* r);
int ath__http_next_header(const ath_http_req_t* r, void** iter, const char** name, const char** value);
/* A curl multi handle driven by `loop`; `done` runs on that loop for each
 * finished request. */
int ath__curlm_new(uv_loop_t* loop, void (*done)(ath_http_req_t* r), ath_curlm_t** out);
int ath__curlm_add(ath_curlm_t* m, ath_http_req_t* r);
void ath__curlm_remove(ath_curlm_t* m, ath_http_req_t* r);
void ath__curlm_close(ath_curlm_t* m);
/* worker.c: runs r on the calling task's worker loop and yields until it
 * ends, then continues in k. Returns -1 when L is not a task's own
 * coroutine (the caller performs it blocking instead). */
int ath__task_http(lua_State* L, ath_http_req_t* r, lua_KFunction k, lua_KContext kctx);

/* http.c: the operations HTTP surface on the engine loop ----------------- */

/* How one listener serves (world:serve options, docs/operations.md
 * "Operations surface: who may do what"). Owned by the listener once
 * handed over (ath__serve_opts_free). */
struct ath_gws_key_s;
typedef struct ath_serve_opts_s {
  int flags;                  /* ATH_SERVE_* */
  struct ath_gws_s* gws;      /* the gateway on this listener, or NULL */
  struct ath_gws_key_s* keys; /* keys with operations rights (serve's auth) */
  int nkeys;
  int auth;                   /* `auth` given: the operations surface needs a key */
  char** allowed_hosts;       /* Host names accepted, NULL: the default */
  int http2;                  /* > 0: HTTP/2 cleartext (h2c) accepted, at most this many streams a second per connection */
  size_t max_buffered;        /* request bytes buffered across connections (0: default) */
} ath_serve_opts_t;
void ath__serve_opts_free(ath_serve_opts_t* o);

/* Listens on host:port (engine thread) as `o` says (taken over, also on
 * failure). Returns 0 and the server, or ATH_EBUSY / ATH_EINVAL with err
 * set. */
int ath__http_start(ath_world_t* w, const char* host, int port, ath_serve_opts_t* o,
                    int* bound, ath_http_t** out, char* err, size_t errlen);
/* Stops listening and frees the server once its handles close (engine
 * thread). */
void ath__http_stop(ath_http_t* h);
/* Decodes %XX (and, with `plus`, '+' as a space) in s in place; writes a
 * NUL and returns the decoded length. */
size_t ath__http_decode(char* s, size_t n, int plus);
/* Asks w's authorizer (athena.h) about req after its key checks passed:
 * 1 allowed (also without an authorizer), 0 denied with the reason in why
 * (an authorizer error denies too). Thread: the request's. */
struct st_h2o_req_t;
int ath__http_authorize(ath_world_t* w, struct st_h2o_req_t* req, const char* surface, const char* key,
                        const char* ip, const char* operation, char* why, size_t whylen);
/* world:serve (o taken over, also on failure). */
int ath__world_serve(ath_world_t* w, const char* host, int port, ath_serve_opts_t* o,
                     int* bound, char* err, size_t errlen);
/* The gateway a world serves (the latest), or NULL. Control thread. */
struct ath_gws_s* ath__world_gateway(ath_world_t* w);

#endif
