/* The watchdog: interrupts pure-Lua code at its deadlines without a count
 * hook on every task.
 *
 * A task's coroutine runs with no hook: a count hook makes Lua call
 * luaG_traceexec on every VM instruction (~10 % of a workflow step). Yet an
 * attempt's timeout, heartbeatTimeout, scheduleToClose, withRetry scope, a
 * cancel past its grace and a shutdown must still stop code that never
 * yields (`while true do end`, even under pcall), and a worker that spins
 * must still beat. So one thread per world looks at its workers every
 * WATCH_MS; a worker still inside the same resume of a task as at the last
 * look gets a kick: a real-time signal to its thread, whose handler sets the
 * count hook on the coroutine it resumes, as lua.c's SIGINT handler does
 * (lua_sethook is documented safe in a signal handler). The hook then beats,
 * checks what is due (task_hook, worker.c), raises the interrupt or takes
 * itself off again. Resumes shorter than WATCH_MS, nearly all, are never
 * kicked.
 *
 * A thread blocked in C (sqlite, curl, a pipe) runs the hook at its next
 * Lua instruction: it is kicked again once the hook ran, else only every
 * KICK_AGAIN looks (a kick is lost if it lands while the worker itself sets
 * the hook), so C code meets few EINTRs (SA_RESTART restarts the rest).
 *
 * Workers register on their own thread and leave before it ends, under the
 * watchdog's lock, so a kick never targets a thread that is gone. */
#define _GNU_SOURCE /* pthread_sigqueue */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "internal.h"

typedef struct ath_watch_s ath_watch_t;

#define WATCH_MS 10
#define KICK_AGAIN 10
/* The kick: a real-time signal, queued with the worker as its value. */
#define KICK_SIGNAL (SIGRTMIN + 3)

struct ath_watch_s {
  uv_mutex_t lock; /* guards everything below */
  uv_cond_t cond;  /* signalled to stop */
  ath_worker_t* head;
  int stop;
  int running;     /* the thread was started and not yet joined */
  uv_thread_t thread;
};

/* On the kicked worker's thread: only an atomic read and lua_sethook. */
static void on_kick(int sig, siginfo_t* si, void* uctx) {
  (void)sig;
  (void)uctx;
  int saved = errno;
  if (si->si_code == SI_QUEUE && si->si_pid == getpid() && si->si_value.sival_ptr != NULL)
    ath__worker_kicked(si->si_value.sival_ptr);
  errno = saved;
}

static uv_once_t install_once = UV_ONCE_INIT;
static int install_rc;

static void install_handler(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = on_kick;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigfillset(&sa.sa_mask);
  install_rc = sigaction(KICK_SIGNAL, &sa, NULL) == 0 ? 0 : errno;
}

/* Kicks wk if its task has been in the same resume since the last look
 * (and the last kick's hook ran, or KICK_AGAIN looks passed). */
static void look(ath_worker_t* wk) {
  ath_watch_entry_t* e = &wk->watch;
  unsigned runs = atomic_load_explicit(&wk->lua_runs, memory_order_relaxed);
  unsigned ticks = atomic_load_explicit(&wk->ticks, memory_order_relaxed);
  if (atomic_load_explicit(&wk->lua_co, memory_order_relaxed) == NULL || runs != e->runs) {
    e->runs = runs;
    e->kicked = 0;
    return;
  }
  if (e->kicked && ticks == e->ticks && ++e->waits < KICK_AGAIN)
    return; /* the hook it armed has not run: in C */
  e->kicked = 1;
  e->ticks = ticks;
  e->waits = 0;
  union sigval v = {.sival_ptr = wk};
  pthread_sigqueue(e->tid, KICK_SIGNAL, v);
}

static void watch_main(void* arg) {
  ath_watch_t* wd = arg;
  uv_mutex_lock(&wd->lock);
  while (!wd->stop) {
    uv_cond_timedwait(&wd->cond, &wd->lock, (uint64_t)WATCH_MS * 1000000u);
    for (ath_worker_t* wk = wd->head; wk != NULL && !wd->stop; wk = wk->watch.next)
      look(wk);
  }
  uv_mutex_unlock(&wd->lock);
}

int ath__watch_start(ath_world_t* w, char* err, size_t errlen) {
  uv_once(&install_once, install_handler);
  if (install_rc != 0) {
    ath__set_err(err, errlen, "cannot install the watchdog's signal handler: %s", strerror(install_rc));
    return ATH_ENOMEM;
  }
  ath_watch_t* wd = calloc(1, sizeof(*wd));
  if (wd == NULL || uv_mutex_init(&wd->lock) != 0) {
    free(wd);
    ath__set_err(err, errlen, "%s", "cannot start the watchdog");
    return ATH_ENOMEM;
  }
  if (uv_cond_init(&wd->cond) != 0) {
    uv_mutex_destroy(&wd->lock);
    free(wd);
    ath__set_err(err, errlen, "%s", "cannot start the watchdog");
    return ATH_ENOMEM;
  }
  w->watch = wd;
  int rc = uv_thread_create(&wd->thread, watch_main, wd);
  if (rc != 0) {
    ath__set_err(err, errlen, "cannot start the watchdog thread: %s", uv_strerror(rc));
    return ATH_ENOMEM;
  }
  wd->running = 1;
  return 0;
}

void ath__watch_stop(ath_world_t* w) {
  ath_watch_t* wd = w->watch;
  if (wd == NULL || !wd->running)
    return;
  uv_mutex_lock(&wd->lock);
  wd->stop = 1;
  uv_cond_signal(&wd->cond);
  uv_mutex_unlock(&wd->lock);
  uv_thread_join(&wd->thread);
  wd->running = 0;
}

void ath__watch_free(ath_world_t* w) {
  ath_watch_t* wd = w->watch;
  if (wd == NULL)
    return;
  ath__watch_stop(w);
  uv_cond_destroy(&wd->cond);
  uv_mutex_destroy(&wd->lock);
  free(wd);
  w->watch = NULL;
}

void ath__watch_add(ath_world_t* w, ath_worker_t* wk) {
  sigset_t kick;
  sigemptyset(&kick);
  sigaddset(&kick, KICK_SIGNAL);
  pthread_sigmask(SIG_UNBLOCK, &kick, NULL); /* a host may block it in its threads */
  ath_watch_t* wd = w->watch;
  uv_mutex_lock(&wd->lock);
  wk->watch = (ath_watch_entry_t){.next = wd->head, .tid = pthread_self()};
  if (wd->head != NULL)
    wd->head->watch.prev = wk;
  wd->head = wk;
  uv_mutex_unlock(&wd->lock);
}

void ath__watch_remove(ath_world_t* w, ath_worker_t* wk) {
  ath_watch_t* wd = w->watch;
  uv_mutex_lock(&wd->lock);
  if (wk->watch.prev != NULL)
    wk->watch.prev->watch.next = wk->watch.next;
  else
    wd->head = wk->watch.next;
  if (wk->watch.next != NULL)
    wk->watch.next->watch.prev = wk->watch.prev;
  wk->watch.next = wk->watch.prev = NULL;
  uv_mutex_unlock(&wd->lock);
}
