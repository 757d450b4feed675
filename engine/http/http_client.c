/* HTTP client requests on libcurl (athena.http.request and, later, the
 * gateway client). Inside a task a request runs on the worker's libuv loop
 * through a curl multi handle (the coroutine yields; many requests are in
 * flight per worker, connections are kept alive per worker); anywhere else
 * it blocks the calling thread with curl_easy_perform. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "internal.h"
#include "http.h"

static void curl_init_once(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
}

static size_t on_body(char* p, size_t size, size_t n, void* ud) {
  ath_http_req_t* r = ud;
  size_t len = size * n;
  if (r->body.len + len > r->max_body)
    return 0; /* aborts the transfer: CURLE_WRITE_ERROR, reported as EMSGSIZE */
  return ath__buf_append(&r->body, p, len) == 0 ? len : 0;
}

int ath__http_prepare(ath_http_req_t* r, const char* method, const char* url,
                      const char* const* headers, const char* body, size_t blen,
                      int64_t timeout_ms, char* err, size_t errlen) {
  static uv_once_t once = UV_ONCE_INIT;
  uv_once(&once, curl_init_once);
  memset(r, 0, sizeof(*r));
  r->max_body = (size_t)64 << 20;
  size_t skip = strncasecmp(url, "http://", 7) == 0 ? 7 : strncasecmp(url, "https://", 8) == 0 ? 8 : 0;
  if (skip == 0 || url[skip] == '\0' || url[skip] == '/') {
    snprintf(err, errlen, "invalid url %s (http:// or https:// and a host)", url);
    return ATH_EINVAL;
  }
  if ((r->easy = curl_easy_init()) == NULL)
    return ATH_ENOMEM;
  CURL* c = r->easy;
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(c, CURLOPT_PRIVATE, r);
  curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, ""); /* what libcurl can decode */
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  if (strcmp(method, "GET") == 0) {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  } else if (strcmp(method, "HEAD") == 0) {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  }
  if (body != NULL) {
    if ((r->req_body = ath__memdup(body, blen)) == NULL) {
      ath__http_free(r);
      return ATH_ENOMEM;
    }
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, r->req_body);
  }
  r->headers = curl_slist_append(NULL, "Expect:");
  for (const char* const* h = headers; h && *h; h++)
    r->headers = curl_slist_append(r->headers, *h);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, r->headers);
  return 0;
}

void ath__http_free(ath_http_req_t* r) {
  if (r->easy)
    curl_easy_cleanup(r->easy);
  curl_slist_free_all(r->headers);
  ath__buf_free(&r->body);
  free(r->req_body);
  memset(r, 0, sizeof(*r));
}

int ath__http_perform(ath_http_req_t* r) {
  r->result = curl_easy_perform(r->easy);
  r->done = 1;
  return 0;
}

const char* ath__http_error_code(const ath_http_req_t* r) {
  switch (r->result) {
    case CURLE_OK:
      return NULL;
    case CURLE_OPERATION_TIMEDOUT:
      return "ETIMEDOUT";
    case CURLE_COULDNT_CONNECT:
      return "ECONNREFUSED";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
      return "EAI_AGAIN";
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
      return "ECONNRESET";
    case CURLE_WRITE_ERROR:
      return "EMSGSIZE";
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
      return "EINVAL";
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
      return "ETLS";
    default:
      return "EIO";
  }
}

const char* ath__http_error_message(const ath_http_req_t* r) {
  return r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result);
}

long ath__http_status(const ath_http_req_t* r) {
  long status = 0;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
  return status;
}

int ath__http_next_header(const ath_http_req_t* r, void** iter, const char** name,
                          const char** value) {
  struct curl_header* prev = *iter;
  struct curl_header* h = curl_easy_nextheader(r->easy, CURLH_HEADER, -1, prev);
  *iter = h;
  if (h == NULL)
    return 0;
  *name = h->name;
  *value = h->value;
  return 1;
}

/* ------------------------------------------------ the worker's multi handle */

typedef struct {
  uv_poll_t poll;
  curl_socket_t fd;
  ath_curlm_t* m;
} sockctx_t;

struct ath_curlm_s {
  CURLM* multi;
  uv_loop_t* loop;
  uv_timer_t timer;
  void (*done)(ath_http_req_t* r); /* called with each finished request */
};

static void check_done(ath_curlm_t* m) {
  CURLMsg* msg;
  int left;
  while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    ath_http_req_t* r = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char**)&r);
    r->result = msg->data.result;
    curl_multi_remove_handle(m->multi, msg->easy_handle);
    r->done = 1;
    r->in_multi = 0;
    m->done(r);
  }
}

static void on_poll(uv_poll_t* p, int status, int events) {
  sockctx_t* sc = p->data;
  int flags = 0;
  if (status < 0)
    flags = CURL_CSELECT_ERR;
  else {
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  int running;
  ath_curlm_t* m = sc->m;
  curl_multi_socket_action(m->multi, sc->fd, flags, &running);
  check_done(m);
}

static void on_timeout(uv_timer_t* t) {
  ath_curlm_t* m = t->data;
  int running;
  curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(m);
}

static int start_timeout(CURLM* multi, long ms, void* userp) {
  (void)multi;
  ath_curlm_t* m = userp;
  if (ms < 0)
    uv_timer_stop(&m->timer);
  else
    uv_timer_start(&m->timer, on_timeout, (uint64_t)ms, 0);
  return 0;
}

static void free_sock(uv_handle_t* h) {
  free(h->data);
}

static int on_socket(CURL* easy, curl_socket_t fd, int what, void* userp, void* socketp) {
  (void)easy;
  ath_curlm_t* m = userp;
  sockctx_t* sc = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (sc != NULL) {
      uv_poll_stop(&sc->poll);
      curl_multi_assign(m->multi, fd, NULL);
      uv_close((uv_handle_t*)&sc->poll, free_sock);
    }
    return 0;
  }
  if (sc == NULL) {
    sc = calloc(1, sizeof(*sc));
    if (sc == NULL || uv_poll_init_socket(m->loop, &sc->poll, fd) != 0) {
      free(sc);
      return -1;
    }
    sc->fd = fd;
    sc->m = m;
    sc->poll.data = sc;
    curl_multi_assign(m->multi, fd, sc);
  }
  int events = 0;
  if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
    events |= UV_READABLE;
  if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
    events |= UV_WRITABLE;
  uv_poll_start(&sc->poll, events, on_poll);
  return 0;
}

int ath__curlm_new(uv_loop_t* loop, void (*done)(ath_http_req_t* r), ath_curlm_t** out) {
  static uv_once_t once = UV_ONCE_INIT;
  uv_once(&once, curl_init_once);
  ath_curlm_t* m = calloc(1, sizeof(*m));
  if (m == NULL || (m->multi = curl_multi_init()) == NULL) {
    free(m);
    return ATH_ENOMEM;
  }
  m->loop = loop;
  m->done = done;
  uv_timer_init(loop, &m->timer);
  m->timer.data = m;
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, start_timeout);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
  *out = m;
  return 0;
}

int ath__curlm_add(ath_curlm_t* m, ath_http_req_t* r) {
  if (curl_multi_add_handle(m->multi, r->easy) != CURLM_OK)
    return ATH_ENOMEM;
  r->in_multi = 1;
  return 0;
}

void ath__curlm_remove(ath_curlm_t* m, ath_http_req_t* r) {
  if (r->in_multi) {
    curl_multi_remove_handle(m->multi, r->easy);
    r->in_multi = 0;
  }
}

static void free_multi(uv_handle_t* h) {
  ath_curlm_t* m = h->data;
  free(m);
}

void ath__curlm_close(ath_curlm_t* m) {
  if (m == NULL)
    return;
  curl_multi_cleanup(m->multi); /* closes its sockets: CURL_POLL_REMOVE for each */
  uv_close((uv_handle_t*)&m->timer, free_multi);
}

void ath__http_set_cafile(ath_http_req_t* r, const char* path) {
  curl_easy_setopt(r->easy, CURLOPT_CAINFO, path); /* libcurl copies it */
}
