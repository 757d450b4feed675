/* Workflow engine pieces that need no world lock (SEMANTICS §9): the
 * per-call limits of the tasks a workflow starts. The histories, parking
 * and outcomes live in world.c ("workflows"). */
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "gw_json.h"

/* A number member of obj as milliseconds (or a count), or `dflt` when
 * absent. -1 when present but not a non-negative number. */
static double num_field(const ath_gj_t* obj, const char* key, double dflt) {
  const ath_gj_t* v = ath__gj_field(obj, key);
  if (v == NULL)
    return dflt;
  if (v->type != ATH_GJ_NUMBER)
    return -1;
  double d = ath__gw_strtod(v->str, NULL);
  return d >= 0 && d < 9007199254740992.0 ? d : -1;
}

int ath__call_new(const ath_activity_t* def, const char* json, size_t len, ath_call_t** out) {
  *out = NULL;
  ath_gj_doc_t* doc;
  int rc = ath__gj_parse(json, len, &doc, NULL);
  if (rc != 0)
    return rc;
  const ath_gj_t* root = doc->root;
  const ath_gj_t* retry = ath__gj_field(root, "retry");
  const ath_gj_t* nr = retry ? ath__gj_field(retry, "nonRetryable") : NULL;
  rc = root->type == ATH_GJ_OBJECT && (retry == NULL || retry->type == ATH_GJ_OBJECT) &&
           (nr == NULL || nr->type == ATH_GJ_ARRAY || (nr->type == ATH_GJ_OBJECT && nr->count == 0))
       ? 0 : ATH_EINVAL; /* an empty list may be encoded as {} */
  size_t nnr = 0, strbytes = 0;
  for (const ath_gj_t* s = nr ? nr->first : NULL; s != NULL && rc == 0; s = s->next) {
    if (s->type != ATH_GJ_STRING)
      rc = ATH_EINVAL;
    nnr++;
    strbytes += s->len + 1;
  }
  ath_call_t* c = NULL;
  if (rc == 0) {
    size_t size = sizeof(*c) + (nnr + 1) * sizeof(char*) + strbytes + len + 1;
    if ((c = calloc(1, size)) == NULL)
      rc = ATH_ENOMEM;
  }
  if (rc != 0) {
    ath__gj_free(doc);
    return rc;
  }
  c->a = *def;
  ath_activity_t* a = &c->a;
  double v[3] = {num_field(root, "timeout", (double)a->timeout_ms),
                 num_field(root, "scheduleToClose", (double)a->schedule_to_close_ms),
                 num_field(root, "heartbeatTimeout", (double)a->heartbeat_timeout_ms)};
  a->timeout_ms = (int64_t)v[0];
  a->schedule_to_close_ms = (int64_t)v[1];
  a->heartbeat_timeout_ms = (int64_t)v[2];
  rc = v[0] < 0 || v[1] < 0 || v[2] < 0 ? ATH_EINVAL : 0;
  char** list = (char**)(c + 1);
  char* strs = (char*)(list + nnr + 1);
  if (retry != NULL && rc == 0) { /* replaces the definition's policy whole */
    const ath_gj_t* b = ath__gj_field(retry, "backoff");
    double ma = num_field(retry, "maxAttempts", 0);
    double ii = num_field(retry, "initialInterval", 1000);
    double mi = num_field(retry, "maxInterval", 60000);
    double mu = num_field(retry, "multiplier", 2);
    a->has_retry = 1;
    a->max_attempts = (int)ma;
    a->backoff = b == NULL || b->type != ATH_GJ_STRING ? ATH_BACKOFF_EXPONENTIAL
                 : strcmp(b->str, "linear") == 0       ? ATH_BACKOFF_LINEAR
                 : strcmp(b->str, "constant") == 0     ? ATH_BACKOFF_CONSTANT
                                                       : ATH_BACKOFF_EXPONENTIAL;
    a->initial_interval_ms = (int64_t)ii;
    a->max_interval_ms = (int64_t)mi;
    a->multiplier = mu;
    rc = ma < 0 || ma > 1e9 || ii < 0 || mi < 0 || mu < 1 ? ATH_EINVAL : 0;
    size_t i = 0;
    for (const ath_gj_t* s = nr ? nr->first : NULL; s != NULL; s = s->next) {
      memcpy(strs, s->str, s->len + 1);
      list[i++] = strs;
      strs += s->len + 1;
    }
    list[i] = NULL;
    a->non_retryable = (const char* const*)list;
  }
  c->json = strs;
  memcpy(c->json, json, len);
  c->json[len] = '\0';
  c->json_len = len;
  ath__gj_free(doc);
  if (rc != 0) {
    free(c);
    return rc;
  }
  *out = c;
  return 0;
}

/* ------------------------------------------------------- owned tasks */

void ath__wf_kid_add(ath_wf_t* wf, ath_task_t* c) {
  if (wf->nkids == wf->kids_cap) {
    if (wf->kids_lo > wf->nkids / 2) { /* mostly removed ones: compact */
      uint32_t k = 0;
      for (uint32_t i = wf->kids_lo; i < wf->nkids; i++)
        if (wf->kids[i] != NULL)
          wf->kids[k++] = wf->kids[i];
      wf->nkids = k;
      wf->kids_lo = 0;
    } else {
      uint32_t cap = wf->kids_cap ? wf->kids_cap * 2 : 8;
      ath_task_t** k = realloc(wf->kids, cap * sizeof(*k));
      if (k == NULL) {
        wf->kids_lost = 1;
        return;
      }
      wf->kids = k;
      wf->kids_cap = cap;
    }
  }
  wf->kids[wf->nkids++] = c;
}

void ath__wf_kid_remove(ath_wf_t* wf, const ath_task_t* c) {
  /* they mostly leave oldest first: the search starts at the oldest left */
  for (uint32_t i = wf->kids_lo; i < wf->nkids; i++) {
    if (wf->kids[i] != c)
      continue;
    wf->kids[i] = NULL;
    while (wf->kids_lo < wf->nkids && wf->kids[wf->kids_lo] == NULL)
      wf->kids_lo++;
    if (wf->kids_lo == wf->nkids)
      wf->kids_lo = wf->nkids = 0;
    return;
  }
}

/* ----------------------------------------------------------- history */

ath_wfev_t* ath__wfev_new(const char* json, size_t len) {
  if (len > UINT32_MAX - 1)
    return NULL;
  ath_wfev_t* e = malloc(sizeof(*e) + len + 1);
  if (e == NULL)
    return NULL;
  atomic_init(&e->refs, 1);
  e->len = (uint32_t)len;
  memcpy(e->json, json, len);
  e->json[len] = '\0';
  return e;
}

void ath__wfev_retain(ath_wfev_t* e) {
  atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
}

void ath__wfev_release(ath_wfev_t* e) {
  if (e != NULL && atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
    free(e);
}

void ath__wfev_release_all(ath_wfev_t** evs, size_t n) {
  for (size_t i = 0; evs != NULL && i < n; i++)
    ath__wfev_release(evs[i]);
  free(evs);
}

int ath__wf_push(ath_wf_t* wf, ath_wfev_t* e) {
  if (wf->nev == wf->evcap) {
    uint32_t cap = wf->evcap ? wf->evcap * 2 : 16;
    ath_wfev_t** v = cap > wf->evcap ? realloc(wf->ev, cap * sizeof(*v)) : NULL;
    if (v == NULL) {
      ath__wfev_release(e);
      return ATH_ENOMEM;
    }
    wf->ev = v;
    wf->evcap = cap;
  }
  wf->ev[wf->nev++] = e;
  return 0;
}

ath_wfev_t** ath__wf_events_from(const ath_wf_t* wf, uint32_t from, size_t* n) {
  *n = from < wf->nev ? wf->nev - from : 0;
  if (*n == 0)
    return NULL;
  ath_wfev_t** out = malloc(*n * sizeof(*out));
  for (size_t i = 0; out != NULL && i < *n; i++) {
    out[i] = wf->ev[from + i];
    ath__wfev_retain(out[i]);
  }
  return out;
}

char* ath__wf_events_join(ath_wfev_t* const* evs, size_t n, size_t* len) {
  size_t total = 2 + (n ? n - 1 : 0);
  for (size_t i = 0; i < n; i++)
    total += evs[i]->len;
  char* out = malloc(total + 1);
  if (out == NULL)
    return NULL;
  char* p = out;
  *p++ = '[';
  for (size_t i = 0; i < n; i++) {
    if (i > 0)
      *p++ = ',';
    memcpy(p, evs[i]->json, evs[i]->len);
    p += evs[i]->len;
  }
  *p++ = ']';
  *p = '\0';
  *len = total;
  return out;
}

int ath__wf_load(ath_wf_t* wf, const char* text, size_t len) {
  const char* end = text + len;
  while (text < end) {
    const char* sep = memchr(text, ATH_WFEV_SEP, (size_t)(end - text));
    const char* stop = sep != NULL ? sep : end;
    if (stop > text) {
      ath_wfev_t* e = ath__wfev_new(text, (size_t)(stop - text));
      if (e == NULL || ath__wf_push(wf, e) != 0)
        return ATH_ENOMEM;
    }
    text = stop + (sep != NULL);
  }
  wf->stored_n = wf->nev;
  return 0;
}

void ath__wf_free(ath_wf_t* wf) {
  for (uint32_t i = 0; i < wf->nev; i++)
    ath__wfev_release(wf->ev[i]);
  free(wf->ev);
  free(wf->kids);
  free(wf->forced_err);
  free(wf);
}
