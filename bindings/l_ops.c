/* core.ops: what the operator commands of the `athena` executable need
 * from C (lua/athena/ops.lua): the store's lock, isatty, and the
 * --progress status line.
 *
 *   core.ops.lockStore(dir) -> lock | nil, err
 *   core.ops.isatty(fd) -> boolean
 *   core.ops.progressWatch(world) -> boolean
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "runtime.h"
#include "lath.h"

/* ------------------------------------------------------------ store lock */

typedef struct {
  int fd; /* -1 once released */
} lstorelock_t;

/* lock:release(), __gc and __close: drops the flock; a second call does
 * nothing. */
static int storelock_release(lua_State* L) {
  lstorelock_t* l = luaL_checkudata(L, 1, "athena.StoreLock");
  if (l->fd >= 0) {
    close(l->fd); /* releases the flock */
    l->fd = -1;
  }
  return 0;
}

/* core.ops.lockStore(dir) -> lock | nil, err. Takes <dir>/athena.lock as a
 * world's start() does (ath__store_lock), so that no world can start on the
 * store while the lock is held: EBUSY while a world holds it, ESTORE when
 * the file cannot be opened or locked. */
static int ops_lockstore(lua_State* L) {
  const char* dir = luaL_checkstring(L, 1);
  lstorelock_t* l = lua_newuserdatauv(L, sizeof(*l), 0);
  l->fd = -1;
  luaL_setmetatable(L, "athena.StoreLock");
  char why[4200];
  int rc = ath__store_lock(dir, &l->fd, why, sizeof(why));
  if (rc != 0)
    return ath__pushfail(L, rc, why);
  return 1;
}

static int ops_isatty(lua_State* L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

/* ------------------------------------------------------------- progress */

/* One status line on stderr, redrawn in place about once a second, summing
 * the figures of every watched world. The thread holds `mu` while it reads
 * the worlds, and a world leaves the list (lath_progress_forget) before it
 * is freed, so the thread never reads a freed world. */
#define PROGRESS_MAX_WORLDS 16

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  int running, stop;
  ath_world_t* worlds[PROGRESS_MAX_WORLDS];
  int nworlds;
  int64_t last_done; /* finished tasks at the previous line; -1 before */
  double last_t;
} prog = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, {0}, 0, -1, 0};

static double mono_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Writes the line for the watched worlds (prog.mu held). */
static void progress_draw(const char* end) {
  int64_t queued = 0, running = 0, failed = 0, retried = 0, done = 0;
  for (int i = 0; i < prog.nworlds; i++) {
    ath_metrics_t m;
    memset(&m, 0, sizeof(m));
    ath_world_metrics(prog.worlds[i], &m);
    queued += m.queued;
    running += m.running;
    failed += m.failed;
    retried += m.retried;
    done += m.completed + m.failed + m.cancelled + m.quarantined;
  }
  double t = mono_seconds();
  double rate = 0;
  if (prog.last_done >= 0 && t > prog.last_t)
    rate = (double)(done - prog.last_done) / (t - prog.last_t);
  prog.last_done = done;
  prog.last_t = t;
  char line[256];
  int n = snprintf(line, sizeof(line),
                   "\r\033[Kathena: %.0f tasks/s | queued %lld | running %lld | failed %lld | retried %lld%s",
                   rate, (long long)queued, (long long)running, (long long)failed,
                   (long long)retried, end);
  if (n > 0 && write(STDERR_FILENO, line, (size_t)n) < 0) {
    /* a closed stderr: nothing to tell */
  }
}

static void* progress_main(void* arg) {
  (void)arg;
  pthread_mutex_lock(&prog.mu);
  while (!prog.stop) {
    progress_draw("");
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1;
    while (!prog.stop && pthread_cond_timedwait(&prog.cv, &prog.mu, &until) != ETIMEDOUT) {
    }
  }
  progress_draw("\n"); /* the final figures stay on screen */
  pthread_mutex_unlock(&prog.mu);
  return NULL;
}

/* core.ops.progressWatch(world) -> boolean. Adds the world to the status
 * line and starts the line's thread, when stderr is a terminal; returns
 * false (and does nothing) otherwise. */
static int ops_progress_watch(lua_State* L) {
  ath_world_t* w = lath_checkworld(L, 1);
  if (!isatty(STDERR_FILENO)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  pthread_mutex_lock(&prog.mu);
  int ok = prog.nworlds < PROGRESS_MAX_WORLDS && !prog.stop;
  if (ok)
    prog.worlds[prog.nworlds++] = w;
  if (ok && !prog.running) {
    prog.running = pthread_create(&prog.thread, NULL, progress_main, NULL) == 0;
    ok = prog.running;
  }
  pthread_mutex_unlock(&prog.mu);
  lua_pushboolean(L, ok);
  return 1;
}

void lath_progress_forget(ath_world_t* w) {
  pthread_mutex_lock(&prog.mu);
  for (int i = 0; i < prog.nworlds; i++) {
    if (prog.worlds[i] == w) {
      prog.worlds[i] = prog.worlds[--prog.nworlds];
      break;
    }
  }
  pthread_mutex_unlock(&prog.mu);
}

void lath_progress_stop(void) {
  pthread_mutex_lock(&prog.mu);
  int running = prog.running;
  prog.stop = 1;
  pthread_cond_signal(&prog.cv);
  pthread_mutex_unlock(&prog.mu);
  if (running)
    pthread_join(prog.thread, NULL);
}

int lath_open_ops(lua_State* L) {
  static const luaL_Reg lock_meta[] = {
    {"__gc", storelock_release},
    {"__close", storelock_release},
    {NULL, NULL},
  };
  static const luaL_Reg lock_methods[] = {
    {"release", storelock_release},
    {NULL, NULL},
  };
  static const luaL_Reg funcs[] = {
    {"lockStore", ops_lockstore},
    {"isatty", ops_isatty},
    {"progressWatch", ops_progress_watch},
    {NULL, NULL},
  };
  ath__newclass(L, "athena.StoreLock", lock_meta, lock_methods);
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_pushinteger(L, ath__store_schema_version);
  lua_setfield(L, -2, "storeSchemaVersion");
  return 1;
}
