/* The fault-injecting, power-cutting test VFS (faultvfs.h). Read for
 * understanding, not copied: SQLite's own crash simulation (src/test6.c)
 * and its wrapping VFS for tests (src/test_vfs.c). */
#include "faultvfs.h"

#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_PATHS 8

enum { REC_WRITE, REC_SIZE };

/* A change no sync covered yet. REC_WRITE: `amt` bytes at `off`, the file
 * `oldsize` long before, `old` its bytes in [off, min(off + amt, oldsize)).
 * REC_SIZE: the file went from `oldsize` to `off` bytes (a truncate or a
 * size hint); `old` holds what a shrink cut off. */
typedef struct rec_s {
  struct rec_s* next;
  int path;
  int kind;
  int64_t off, oldsize;
  int amt, oldlen;
  unsigned char* old;
  unsigned char* data;
} rec_t;

typedef struct {
  sqlite3_file base;
  int path;          /* index in paths[], or -1: not a store file */
  sqlite3_file* real;
} ffile_t;

static sqlite3_vfs vfs;
static sqlite3_vfs* real_vfs;
static sqlite3_io_methods methods;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char paths[MAX_PATHS][512];
static int npaths;
static rec_t* head; /* oldest first */
static rec_t* tail;
static int64_t ops, cut_at;
static int64_t fail_at; /* faultvfs_fail_once: the operation that fails */
static int fail_at_rc;
static unsigned cut_seed;
static int cut_keep_none;
static atomic_int write_rc, sync_rc;
static atomic_llong refused;
static void (*_Atomic sync_hook)(void);

static int is_store_file(const char* name) {
  size_t n = name ? strlen(name) : 0;
  return (n >= 10 && strcmp(name + n - 10, "/athena.db") == 0) ||
         (n >= 14 && strcmp(name + n - 14, "/athena.db-wal") == 0);
}

static int path_index(const char* name) {
  for (int i = 0; i < npaths; i++)
    if (strcmp(paths[i], name) == 0)
      return i;
  if (npaths == MAX_PATHS)
    abort();
  snprintf(paths[npaths], sizeof(paths[npaths]), "%s", name);
  return npaths++;
}

static void rec_free(rec_t* r) {
  free(r->old);
  free(r->data);
  free(r);
}

static void append(rec_t* r) {
  r->next = NULL;
  if (tail)
    tail->next = r;
  else
    head = r;
  tail = r;
}

/* A sync made every earlier change of the file durable. */
static void forget(int path) {
  rec_t** p = &head;
  tail = NULL;
  while (*p) {
    rec_t* r = *p;
    if (r->path == path) {
      *p = r->next;
      rec_free(r);
    } else {
      tail = r;
      p = &r->next;
    }
  }
}

static void xpwrite(int fd, const void* buf, size_t n, int64_t off) {
  if (n > 0 && pwrite(fd, buf, n, (off_t)off) != (ssize_t)n)
    abort();
}

static void xtruncate(int fd, int64_t size) {
  if (ftruncate(fd, (off_t)size) != 0)
    abort();
}

/* The power goes: each unsynced change survives or not, the files are
 * left that way, and the process ends. Lock held. */
static void power_cut(void) {
  int fds[MAX_PATHS];
  for (int i = 0; i < npaths; i++)
    fds[i] = open(paths[i], O_RDWR);
  /* back to the last synced state: undo everything, newest first */
  int n = 0;
  for (rec_t* r = head; r; r = r->next)
    n++;
  rec_t** v = malloc((n ? n : 1) * sizeof(*v));
  n = 0;
  for (rec_t* r = head; r; r = r->next)
    v[n++] = r;
  for (int i = n - 1; i >= 0; i--) {
    rec_t* r = v[i];
    int fd = fds[r->path];
    if (fd < 0)
      continue;
    if (r->kind == REC_WRITE) {
      xpwrite(fd, r->old, (size_t)r->oldlen, r->off);
      if (r->oldsize < r->off + r->amt)
        xtruncate(fd, r->oldsize);
    } else if (r->off >= r->oldsize) {
      xtruncate(fd, r->oldsize);
    } else {
      xpwrite(fd, r->old, (size_t)r->oldlen, r->off);
    }
  }
  /* then what the disk happened to keep, in order */
  unsigned seed = cut_seed;
  for (int i = 0; i < n; i++) {
    rec_t* r = v[i];
    int fd = fds[r->path];
    if (fd < 0 || cut_keep_none || rand_r(&seed) % 2 == 0)
      continue;
    if (r->kind == REC_WRITE)
      xpwrite(fd, r->data, (size_t)r->amt, r->off);
    else
      xtruncate(fd, r->off);
  }
  for (int i = 0; i < npaths; i++) {
    if (fds[i] >= 0) {
      fsync(fds[i]);
      close(fds[i]);
    }
  }
  _exit(0);
}

/* Counts an operation of a store file; the one armed cuts the power.
 * Returns the code the operation fails with (faultvfs_fail_once), or 0.
 * Lock held. */
static int count_op(int fail_rc) {
  if (++ops == cut_at)
    power_cut();
  if (fail_at == 0 || ops < fail_at || fail_rc == 0)
    return 0; /* a truncate passes: the next write or sync fails */
  fail_at = 0;
  atomic_fetch_add(&refused, 1);
  return fail_rc;
}

/* The code an injected fault refuses a write or sync with (counted), or 0. */
static int refusal(atomic_int* rc) {
  int code = atomic_load(rc);
  if (code != 0)
    atomic_fetch_add(&refused, 1);
  return code;
}

static int64_t size_of(ffile_t* f) {
  sqlite3_int64 sz = 0;
  if (f->real->pMethods->xFileSize(f->real, &sz) != SQLITE_OK)
    abort();
  return sz;
}

static int f_close(sqlite3_file* file) {
  ffile_t* f = (ffile_t*)file;
  return f->real->pMethods->xClose(f->real);
}

static int f_read(sqlite3_file* file, void* buf, int amt, sqlite3_int64 off) {
  ffile_t* f = (ffile_t*)file;
  return f->real->pMethods->xRead(f->real, buf, amt, off);
}

static int f_write(sqlite3_file* file, const void* buf, int amt, sqlite3_int64 off) {
  ffile_t* f = (ffile_t*)file;
  if (f->path < 0)
    return f->real->pMethods->xWrite(f->real, buf, amt, off);
  int rc = refusal(&write_rc);
  if (rc != 0)
    return rc;
  pthread_mutex_lock(&mu);
  if ((rc = count_op(fail_at_rc)) != 0) {
    pthread_mutex_unlock(&mu);
    return rc;
  }
  rec_t* r = calloc(1, sizeof(*r));
  r->path = f->path;
  r->kind = REC_WRITE;
  r->off = off;
  r->amt = amt;
  r->oldsize = size_of(f);
  r->oldlen = r->oldsize > off ? (int)(r->oldsize - off < amt ? r->oldsize - off : amt) : 0;
  r->old = malloc((size_t)r->oldlen + 1);
  r->data = malloc((size_t)amt + 1);
  if (r->oldlen > 0 && f->real->pMethods->xRead(f->real, r->old, r->oldlen, off) != SQLITE_OK)
    abort();
  memcpy(r->data, buf, (size_t)amt);
  append(r);
  rc = f->real->pMethods->xWrite(f->real, buf, amt, off);
  pthread_mutex_unlock(&mu);
  return rc;
}

/* A size change (truncate, size hint) by `op`, recorded. Lock held. */
static rec_t* size_rec(ffile_t* f, int64_t to) {
  rec_t* r = calloc(1, sizeof(*r));
  r->path = f->path;
  r->kind = REC_SIZE;
  r->oldsize = size_of(f);
  r->off = to;
  if (to < r->oldsize) {
    r->oldlen = (int)(r->oldsize - to);
    r->old = malloc((size_t)r->oldlen);
    if (f->real->pMethods->xRead(f->real, r->old, r->oldlen, to) != SQLITE_OK)
      abort();
  }
  return r;
}

static int f_truncate(sqlite3_file* file, sqlite3_int64 size) {
  ffile_t* f = (ffile_t*)file;
  if (f->path < 0)
    return f->real->pMethods->xTruncate(f->real, size);
  pthread_mutex_lock(&mu);
  count_op(0);
  append(size_rec(f, size));
  int rc = f->real->pMethods->xTruncate(f->real, size);
  pthread_mutex_unlock(&mu);
  return rc;
}

static int f_sync(sqlite3_file* file, int flags) {
  ffile_t* f = (ffile_t*)file;
  if (f->path < 0)
    return f->real->pMethods->xSync(f->real, flags);
  int rc = refusal(&sync_rc);
  if (rc != 0)
    return rc;
  pthread_mutex_lock(&mu);
  if ((rc = count_op(SQLITE_IOERR_FSYNC)) != 0) {
    pthread_mutex_unlock(&mu);
    return rc;
  }
  rc = f->real->pMethods->xSync(f->real, flags);
  if (rc == SQLITE_OK)
    forget(f->path);
  pthread_mutex_unlock(&mu);
  void (*hook)(void) = atomic_load(&sync_hook);
  if (rc == SQLITE_OK && hook != NULL)
    hook();
  return rc;
}

static int f_file_size(sqlite3_file* file, sqlite3_int64* size) {
  ffile_t* f = (ffile_t*)file;
  return f->real->pMethods->xFileSize(f->real, size);
}

static int f_lock(sqlite3_file* file, int lock) {
  ffile_t* f = (ffile_t*)file;
  return f->real->pMethods->xLock(f->real, lock);
}

static int f_unlock(sqlite3_file* file, int lock) {
  ffile_t* f = (ffile_t*)file;
  return f->real->pMethods->xUnlock(f->real, lock);
}

static int f_check_reserved(sqlite3_file* file, int* out) {
  ffile_t* f = (ffile_t*)file;
  return f->real->pMethods->xCheckReservedLock(f->real, out);
}

static int f_file_control(sqlite3_file* file, int op, void* arg) {
  ffile_t* f = (ffile_t*)file;
  if (f->path < 0 || op != SQLITE_FCNTL_SIZE_HINT)
    return f->real->pMethods->xFileControl(f->real, op, arg);
  /* the unix VFS grows the file itself here: record it like a truncate */
  pthread_mutex_lock(&mu);
  count_op(0);
  rec_t* r = size_rec(f, size_of(f));
  int rc = f->real->pMethods->xFileControl(f->real, op, arg);
  r->off = size_of(f);
  append(r);
  pthread_mutex_unlock(&mu);
  return rc;
}

static int f_sector_size(sqlite3_file* file) {
  ffile_t* f = (ffile_t*)file;
  return f->real->pMethods->xSectorSize(f->real);
}

static int f_device_characteristics(sqlite3_file* file) {
  ffile_t* f = (ffile_t*)file;
  return f->real->pMethods->xDeviceCharacteristics(f->real);
}

static int f_shm_map(sqlite3_file* file, int pg, int pgsz, int extend, void volatile** pp) {
  ffile_t* f = (ffile_t*)file;
  return f->real->pMethods->xShmMap(f->real, pg, pgsz, extend, pp);
}

static int f_shm_lock(sqlite3_file* file, int offset, int n, int flags) {
  ffile_t* f = (ffile_t*)file;
  return f->real->pMethods->xShmLock(f->real, offset, n, flags);
}

static void f_shm_barrier(sqlite3_file* file) {
  ffile_t* f = (ffile_t*)file;
  f->real->pMethods->xShmBarrier(f->real);
}

static int f_shm_unmap(sqlite3_file* file, int del) {
  ffile_t* f = (ffile_t*)file;
  return f->real->pMethods->xShmUnmap(f->real, del);
}

static int v_open(sqlite3_vfs* v, const char* name, sqlite3_file* file, int flags, int* out) {
  (void)v;
  ffile_t* f = (ffile_t*)file;
  f->real = (sqlite3_file*)(f + 1);
  f->path = -1;
  int rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out);
  if (rc != SQLITE_OK) {
    file->pMethods = NULL;
    return rc;
  }
  if (is_store_file(name)) {
    pthread_mutex_lock(&mu);
    f->path = path_index(name);
    pthread_mutex_unlock(&mu);
  }
  file->pMethods = &methods;
  return SQLITE_OK;
}

static int v_delete(sqlite3_vfs* v, const char* name, int dirsync) {
  (void)v;
  if (is_store_file(name)) { /* a WAL goes once checkpointed: a new one starts empty */
    pthread_mutex_lock(&mu);
    forget(path_index(name));
    pthread_mutex_unlock(&mu);
  }
  return real_vfs->xDelete(real_vfs, name, dirsync);
}

static int v_access(sqlite3_vfs* v, const char* name, int flags, int* out) {
  (void)v;
  return real_vfs->xAccess(real_vfs, name, flags, out);
}

static int v_full_pathname(sqlite3_vfs* v, const char* name, int n, char* out) {
  (void)v;
  return real_vfs->xFullPathname(real_vfs, name, n, out);
}

static void* v_dlopen(sqlite3_vfs* v, const char* name) {
  (void)v;
  return real_vfs->xDlOpen(real_vfs, name);
}

static void v_dlerror(sqlite3_vfs* v, int n, char* out) {
  (void)v;
  real_vfs->xDlError(real_vfs, n, out);
}

static void (*v_dlsym(sqlite3_vfs* v, void* h, const char* sym))(void) {
  (void)v;
  return real_vfs->xDlSym(real_vfs, h, sym);
}

static void v_dlclose(sqlite3_vfs* v, void* h) {
  (void)v;
  real_vfs->xDlClose(real_vfs, h);
}

static int v_randomness(sqlite3_vfs* v, int n, char* out) {
  (void)v;
  return real_vfs->xRandomness(real_vfs, n, out);
}

static int v_sleep(sqlite3_vfs* v, int us) {
  (void)v;
  return real_vfs->xSleep(real_vfs, us);
}

static int v_current_time(sqlite3_vfs* v, double* out) {
  (void)v;
  return real_vfs->xCurrentTime(real_vfs, out);
}

static int v_last_error(sqlite3_vfs* v, int n, char* out) {
  (void)v;
  return real_vfs->xGetLastError(real_vfs, n, out);
}

static int v_current_time64(sqlite3_vfs* v, sqlite3_int64* out) {
  (void)v;
  return real_vfs->xCurrentTimeInt64(real_vfs, out);
}

void faultvfs_install(void) {
  pthread_mutex_lock(&mu);
  if (real_vfs == NULL) {
    real_vfs = sqlite3_vfs_find(NULL);
    methods = (sqlite3_io_methods){
      2, f_close, f_read, f_write, f_truncate, f_sync, f_file_size, f_lock, f_unlock,
      f_check_reserved, f_file_control, f_sector_size, f_device_characteristics,
      f_shm_map, f_shm_lock, f_shm_barrier, f_shm_unmap, NULL, NULL,
    };
    vfs = (sqlite3_vfs){
      2, (int)(sizeof(ffile_t) + (size_t)real_vfs->szOsFile), real_vfs->mxPathname, NULL,
      "athena-faultvfs", NULL, v_open, v_delete, v_access, v_full_pathname, v_dlopen,
      v_dlerror, v_dlsym, v_dlclose, v_randomness, v_sleep, v_current_time, v_last_error,
      v_current_time64, NULL, NULL, NULL,
    };
    sqlite3_vfs_register(&vfs, 1);
  }
  pthread_mutex_unlock(&mu);
}

void faultvfs_fail_writes(int sqlite_rc) {
  atomic_store(&write_rc, sqlite_rc);
}

void faultvfs_fail_syncs(int sqlite_rc) {
  atomic_store(&sync_rc, sqlite_rc);
}

void faultvfs_fail_once(int64_t n, int rc) {
  pthread_mutex_lock(&mu);
  fail_at = ops + n;
  fail_at_rc = rc;
  pthread_mutex_unlock(&mu);
}

int64_t faultvfs_refused(void) {
  return atomic_load(&refused);
}

void faultvfs_arm_cut(int64_t cut, unsigned seed, int keep_none) {
  pthread_mutex_lock(&mu);
  cut_at = cut > 0 ? ops + cut : 0;
  cut_seed = seed;
  cut_keep_none = keep_none;
  pthread_mutex_unlock(&mu);
}

int64_t faultvfs_ops(void) {
  pthread_mutex_lock(&mu);
  int64_t n = ops;
  pthread_mutex_unlock(&mu);
  return n;
}

void faultvfs_on_sync(void (*fn)(void)) {
  atomic_store(&sync_hook, fn);
}

void faultvfs_cut_now(void) {
  pthread_mutex_lock(&mu);
  power_cut();
}
