/* Mapped reads: a VFS over SQLite's own (unix) one whose main database
 * and WAL files are read by copying from one read-only shared mapping of
 * the file per process instead of a pread system call per page.
 *
 * Why: in WAL mode a connection drops its whole page cache whenever it
 * finds that another connection committed, and the gateway's readers see
 * a commit of the writer's every few dozen reads in a fetch/insert mix;
 * they then read most pages of their next fetches again. A pread costs
 * 1.6-1.8 us on this (paravirtualized) machine against 0.07 us for the
 * same 4 KiB copied from a mapping, and the mix's preads were 31 % of the
 * server's CPU. SQLite's own memory map (PRAGMA mmap_size) does not help:
 * it unmaps the file with every dropped cache and faults its pages in
 * again. This map stays for as long as a connection has the file open,
 * shared by all of them, and the kernel keeps it coherent with every
 * write to the file (by this process or another).
 *
 * Everything else (writes, locks, the WAL and its index, SQLite's own
 * xFetch) goes to the unix VFS unchanged; SQLite still decides which
 * bytes a read wants, so a read sees what pread would return at that
 * moment. A read of bytes the map may not cover (past the size last
 * learnt from xFileSize, xWrite or xTruncate, or past the map) is a
 * pread. A file cut short behind SQLite's back (another process) would
 * make a copy from the map fault (SIGBUS): that copy is abandoned
 * (siglongjmp out of the handler), the map is not used for the file any
 * more, and the read is a pread, whose short read SQLite reports as it
 * always does.
 *
 * The store's VFS ("athena-store", ath__sqlite_store_vfs) is the same
 * layer without maps and with gathered writes: see "Gathered writes"
 * below. Both sit on the VFS that was SQLite's default when first asked
 * for (unix; a test's own VFS in tests that install one first). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>
#include "db.h"

#define MAP_VFS "athena-map"
#define STORE_VFS "athena-store"
#define MAP_SPARE ((int64_t)1 << 30) /* address space past the file's size, for its growth */

/* One file's mapping, shared by the process's handles on it (by inode). */
typedef struct map_s {
  struct map_s* next;
  dev_t dev;
  ino_t ino;
  const char* base;
  int64_t len;           /* mapped bytes */
  _Atomic int64_t valid; /* bytes known to be in the file */
  atomic_int broken;     /* it faulted: the file was cut short; not used any more */
  int refs;
} map_t;

typedef struct gather_s gather_t;

typedef struct {
  sqlite3_file base;
  map_t* map;         /* NULL: every read is the base VFS's */
  gather_t* g;        /* the store's VFS: writes gathered (NULL: none) */
  sqlite3_file* real; /* the base VFS's file, right after this struct */
} mfile_t;

static sqlite3_vfs vfs;
static sqlite3_vfs* base_vfs;
static sqlite3_io_methods methods[3]; /* by the base file's iVersion - 1 */
static uv_mutex_t maps_mu;
static map_t* maps;
static struct sigaction old_bus;
/* set while copying from a map; volatile: memcpy reads no global, and the
 * stores around it would otherwise be dropped as dead */
static _Thread_local sigjmp_buf* volatile copying;

static void on_sigbus(int sig, siginfo_t* si, void* uc) {
  if (copying != NULL)
    siglongjmp(*copying, 1);
  /* not a copy of ours: whatever was there before */
  if (old_bus.sa_flags & SA_SIGINFO) {
    old_bus.sa_sigaction(sig, si, uc);
  } else if (old_bus.sa_handler != SIG_IGN && old_bus.sa_handler != SIG_DFL) {
    old_bus.sa_handler(sig);
  } else {
    signal(SIGBUS, SIG_DFL); /* the faulting access runs again and ends the process */
  }
}

/* Copies [off, off + amt) of m into buf; 0 when the file was shorter. */
static int copy_from(map_t* m, void* buf, int amt, int64_t off) {
  sigjmp_buf jb;
  if (sigsetjmp(jb, 0) != 0) {
    copying = NULL;
    atomic_store(&m->broken, 1); /* cut short behind our back: no map for it any more */
    atomic_store(&m->valid, 0);
    return 0;
  }
  copying = &jb;
  atomic_signal_fence(memory_order_seq_cst); /* the copy stays between the two stores */
  memcpy(buf, m->base + off, (size_t)amt);
  atomic_signal_fence(memory_order_seq_cst);
  copying = NULL;
  return 1;
}

static void set_valid(map_t* m, int64_t size) {
  atomic_store(&m->valid, size < m->len ? size : m->len);
}

/* --------------------------------------------------------- gathered writes */

/* The store writes each commit's pages to its WAL one frame at a time, and
 * SQLite writes a frame as two writes (its 24-byte header, then the page):
 * two system calls per 4 KiB page at ~3 us each on this (paravirtualized)
 * machine, where one 64 KiB write costs ~10 us; a checkpoint writes the
 * database a page at a time, mostly in ascending runs. The store's VFS
 * gathers writes that continue one another (each starts where the last
 * ended) in a buffer per file, and writes the buffer out in one call
 * before any other operation on the file: a read (which may want those
 * bytes), a write elsewhere, a sync, a truncate, its size, a lock, a file
 * control, its close.
 *
 * Durability is SQLite's as before: it counts a commit (or a checkpoint)
 * done only after a sync, which writes the buffer out first and fails if
 * that write fails, as SQLite's own write would have failed. SQLite does
 * not look at the outcome of every call (most file controls, unlocks), so
 * an error from a flush there is kept and returned by the file's next
 * read, write, sync, truncate or size, which it does look at.
 *
 * Other connections (the store's readers) read the files through their
 * own descriptors, and learn of new frames from the database's shared
 * index: before SQLite changes it (xShmBarrier, xShmLock on the database)
 * the WAL's buffer is written out too. Under synchronous=FULL (the
 * store's) a sync comes first anyway; without one, a flush that fails
 * there would leave the index naming frames that are not in the file, so
 * it breaks the file: every later call fails with an I/O error (the store
 * then reopens the database). */

#define GATHER_MAX (64 * 1024) /* the unix VFS writes at most 128 KiB - 1 in one call */

struct gather_s {
  char* buf;      /* GATHER_MAX bytes, from the first write */
  int64_t off;    /* where buf goes in the file */
  int len;        /* bytes in buf */
  int pending;    /* an error of a flush that SQLite did not hear of yet */
  int broken;     /* an error that every call returns from now on */
  mfile_t* self;
  const char* db; /* a main database: the name SQLite opened it by */
  mfile_t* peer;  /* a main database's WAL, a WAL's main database (while both are open) */
  gather_t* next; /* in `opened`, the store's open main databases */
};

static gather_t* opened; /* under maps_mu */

/* Writes out what p gathered: 0 or the write's error. */
static int flush(mfile_t* p) {
  gather_t* g = p->g;
  if (g->len == 0)
    return SQLITE_OK;
  int rc = p->real->pMethods->xWrite(p->real, g->buf, g->len, g->off);
  g->len = 0; /* written or failed, as a write SQLite made itself */
  return rc;
}

/* Before a call whose error SQLite acts on: the flush's error, or one an
 * earlier call could not report. */
static int flush_reported(mfile_t* p) {
  gather_t* g = p->g;
  if (g == NULL)
    return SQLITE_OK;
  if (g->broken)
    return g->broken;
  int rc = flush(p);
  if (rc == SQLITE_OK)
    rc = g->pending;
  g->pending = SQLITE_OK;
  return rc;
}

/* Before any other call: its error waits for the next that reports. */
static void flush_deferred(mfile_t* p) {
  gather_t* g = p->g;
  int rc = g != NULL && !g->broken ? flush(p) : SQLITE_OK;
  if (rc != SQLITE_OK && g->pending == SQLITE_OK)
    g->pending = rc;
}

/* Before a main database's shared index changes: its WAL's buffer and its
 * own; a failure breaks the file. */
static void flush_index(mfile_t* p) {
  mfile_t* both[2] = { p, p->g != NULL ? p->g->peer : NULL };
  for (int i = 0; i < 2; i++) {
    gather_t* g = both[i] != NULL ? both[i]->g : NULL;
    if (g != NULL && !g->broken && flush(both[i]) != SQLITE_OK)
      g->broken = SQLITE_IOERR_WRITE;
  }
}

/* Gathers a write that continues the buffer, or starts the buffer anew
 * (writing the old one out first). 1: taken; 0: write it as it is, unless
 * *rc (the flush's error) says otherwise. */
static int gather(mfile_t* p, const void* data, int amt, int64_t off, int* rc) {
  gather_t* g = p->g;
  if (g->len > 0 && off == g->off + g->len && g->len + amt <= GATHER_MAX) {
    memcpy(g->buf + g->len, data, (size_t)amt);
    g->len += amt;
    return 1;
  }
  if ((*rc = flush_reported(p)) != SQLITE_OK || amt >= GATHER_MAX)
    return 0;
  if (g->buf == NULL && (g->buf = malloc(GATHER_MAX)) == NULL)
    return 0;
  memcpy(g->buf, data, (size_t)amt);
  g->off = off;
  g->len = amt;
  return 1;
}

/* Gives p (opened by the store's VFS) its buffer: a main database is
 * listed for its WAL to find, a WAL paired with its main database (whose
 * xShm calls flush it). A WAL whose database is not found (none is
 * expected) is not gathered. SQLITE_OK or SQLITE_NOMEM. */
static int gather_open(mfile_t* p, sqlite3_filename name, int flags) {
  if (!(flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL)) || name == NULL)
    return SQLITE_OK;
  gather_t* g = calloc(1, sizeof(*g));
  if (g == NULL)
    return SQLITE_NOMEM;
  g->self = p;
  uv_mutex_lock(&maps_mu);
  if (flags & SQLITE_OPEN_MAIN_DB) {
    g->db = name;
    g->next = opened;
    opened = g;
  } else {
    /* SQLite keeps a WAL's name in one block with its database's name,
     * the very pointer that database was opened by */
    const char* db = sqlite3_filename_database(name);
    gather_t* d = opened;
    while (d != NULL && d->db != db)
      d = d->next;
    if (d != NULL && d->peer == NULL) {
      d->peer = p;
      g->peer = d->self;
    } else {
      free(g);
      g = NULL;
    }
  }
  uv_mutex_unlock(&maps_mu);
  p->g = g;
  return SQLITE_OK;
}

/* At p's close (after its last flush): unpaired, unlisted, freed. */
static void gather_close(mfile_t* p) {
  gather_t* g = p->g;
  if (g == NULL)
    return;
  uv_mutex_lock(&maps_mu);
  if (g->peer != NULL)
    g->peer->g->peer = NULL;
  for (gather_t** q = &opened; *q != NULL; q = &(*q)->next)
    if (*q == g) {
      *q = g->next;
      break;
    }
  uv_mutex_unlock(&maps_mu);
  free(g->buf);
  free(g);
  p->g = NULL;
}

/* ------------------------------------------------------------ file methods */

static int m_read(sqlite3_file* f, void* buf, int amt, sqlite3_int64 off) {
  mfile_t* p = (mfile_t*)f;
  map_t* m = p->map;
  if (m != NULL && off >= 0 && off + amt <= atomic_load_explicit(&m->valid, memory_order_relaxed) &&
      copy_from(m, buf, amt, off))
    return SQLITE_OK;
  return p->real->pMethods->xRead(p->real, buf, amt, off);
}

static int m_write(sqlite3_file* f, const void* buf, int amt, sqlite3_int64 off) {
  mfile_t* p = (mfile_t*)f;
  int rc = p->real->pMethods->xWrite(p->real, buf, amt, off);
  /* the file is at least this long now; valid only grows from a size
   * learnt (a write never makes a short file valid on its own) */
  if (rc == SQLITE_OK && p->map != NULL && !atomic_load(&p->map->broken)) {
    int64_t v = atomic_load(&p->map->valid);
    if (off <= v && off + amt > v)
      set_valid(p->map, off + amt);
  }
  return rc;
}

static int m_truncate(sqlite3_file* f, sqlite3_int64 size) {
  mfile_t* p = (mfile_t*)f;
  if (p->map != NULL && size < atomic_load(&p->map->valid))
    set_valid(p->map, size); /* before the file is cut */
  return p->real->pMethods->xTruncate(p->real, size);
}

static int m_file_size(sqlite3_file* f, sqlite3_int64* size) {
  mfile_t* p = (mfile_t*)f;
  int rc = p->real->pMethods->xFileSize(p->real, size);
  if (rc == SQLITE_OK && p->map != NULL && !atomic_load(&p->map->broken))
    set_valid(p->map, *size);
  return rc;
}

static void map_release(map_t* m) {
  uv_mutex_lock(&maps_mu);
  if (--m->refs == 0) {
    for (map_t** q = &maps; *q != NULL; q = &(*q)->next)
      if (*q == m) {
        *q = m->next;
        break;
      }
    munmap((void*)m->base, (size_t)m->len);
    free(m);
  }
  uv_mutex_unlock(&maps_mu);
}

static int m_close(sqlite3_file* f) {
  mfile_t* p = (mfile_t*)f;
  int rc = p->real->pMethods->xClose(p->real);
  if (p->map != NULL)
    map_release(p->map);
  p->map = NULL;
  return rc;
}

/* The rest go to the unix file as they are. */
#define REAL(f) (((mfile_t*)(f))->real)
static int m_sync(sqlite3_file* f, int flags) { return REAL(f)->pMethods->xSync(REAL(f), flags); }
static int m_lock(sqlite3_file* f, int l) { return REAL(f)->pMethods->xLock(REAL(f), l); }
static int m_unlock(sqlite3_file* f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int m_check_lock(sqlite3_file* f, int* out) {
  return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int m_fcntl(sqlite3_file* f, int op, void* arg) {
  return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int m_sector(sqlite3_file* f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int m_devchar(sqlite3_file* f) { return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f)); }
static int m_shm_map(sqlite3_file* f, int pg, int sz, int extend, void volatile** pp) {
  return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, extend, pp);
}
static int m_shm_lock(sqlite3_file* f, int off, int n, int flags) {
  return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}
static void m_shm_barrier(sqlite3_file* f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int m_shm_unmap(sqlite3_file* f, int del) { return REAL(f)->pMethods->xShmUnmap(REAL(f), del); }
static int m_fetch(sqlite3_file* f, sqlite3_int64 off, int amt, void** pp) {
  return REAL(f)->pMethods->xFetch(REAL(f), off, amt, pp);
}
static int m_unfetch(sqlite3_file* f, sqlite3_int64 off, void* p) {
  return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

/* The store's file methods: the same (no store file is mapped), each
 * after the flush it needs. */
#define REPORTED(f, call)                      \
  do {                                         \
    int frc_ = flush_reported((mfile_t*)(f));  \
    return frc_ != SQLITE_OK ? frc_ : (call);  \
  } while (0)
#define DEFERRED(f, call)             \
  do {                                \
    flush_deferred((mfile_t*)(f));    \
    return (call);                    \
  } while (0)
static int g_read(sqlite3_file* f, void* buf, int amt, sqlite3_int64 off) {
  REPORTED(f, m_read(f, buf, amt, off));
}
static int g_write(sqlite3_file* f, const void* buf, int amt, sqlite3_int64 off) {
  mfile_t* p = (mfile_t*)f;
  int rc = SQLITE_OK;
  if (p->g == NULL)
    return m_write(f, buf, amt, off);
  if (!p->g->broken && gather(p, buf, amt, off, &rc))
    return SQLITE_OK;
  REPORTED(f, rc != SQLITE_OK ? rc : m_write(f, buf, amt, off));
}
static int g_truncate(sqlite3_file* f, sqlite3_int64 size) { REPORTED(f, m_truncate(f, size)); }
static int g_sync(sqlite3_file* f, int flags) { REPORTED(f, m_sync(f, flags)); }
static int g_file_size(sqlite3_file* f, sqlite3_int64* size) { REPORTED(f, m_file_size(f, size)); }
static int g_lock(sqlite3_file* f, int l) { DEFERRED(f, m_lock(f, l)); }
static int g_unlock(sqlite3_file* f, int l) { DEFERRED(f, m_unlock(f, l)); }
static int g_check_lock(sqlite3_file* f, int* out) { DEFERRED(f, m_check_lock(f, out)); }
static int g_fcntl(sqlite3_file* f, int op, void* arg) { DEFERRED(f, m_fcntl(f, op, arg)); }
static int g_fetch(sqlite3_file* f, sqlite3_int64 off, int amt, void** pp) {
  DEFERRED(f, m_fetch(f, off, amt, pp));
}
#undef REPORTED
#undef DEFERRED
static int g_shm_lock(sqlite3_file* f, int off, int n, int flags) {
  flush_index((mfile_t*)f);
  return m_shm_lock(f, off, n, flags);
}
static void g_shm_barrier(sqlite3_file* f) {
  flush_index((mfile_t*)f);
  m_shm_barrier(f);
}
static int g_close(sqlite3_file* f) {
  flush_deferred((mfile_t*)f);
  gather_close((mfile_t*)f);
  return m_close(f);
}

/* ------------------------------------------------------------------- open */

/* The process's map of the file at path, if the file SQLite just opened
 * is the one the path names now (fd is ours, opened before SQLite's: a
 * file renamed in between shows another inode and gets no map; a file
 * that SQLite's open created, such as a first WAL, gets none either). */
static map_t* map_for(const char* path, int fd) {
  struct stat a, b;
  if (fstat(fd, &a) != 0 || stat(path, &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino ||
      !S_ISREG(a.st_mode))
    return NULL;
  uv_mutex_lock(&maps_mu);
  map_t* m = maps;
  while (m != NULL && !(m->dev == a.st_dev && m->ino == a.st_ino))
    m = m->next;
  if (m == NULL && (m = calloc(1, sizeof(*m))) != NULL) {
    m->len = (int64_t)a.st_size + MAP_SPARE;
    void* base = mmap(NULL, (size_t)m->len, PROT_READ, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
      free(m);
      m = NULL;
    } else {
      m->base = base;
      m->dev = a.st_dev;
      m->ino = a.st_ino;
      set_valid(m, a.st_size);
      m->next = maps;
      maps = m;
    }
  }
  if (m != NULL)
    m->refs++;
  uv_mutex_unlock(&maps_mu);
  return m;
}

/* Opens the base VFS's file under p, whose methods become ours[] (by the
 * base file's iVersion - 1). */
static int open_real(mfile_t* p, sqlite3_filename name, int flags, int* out_flags,
                     const sqlite3_io_methods* ours) {
  memset(p, 0, sizeof(*p));
  p->real = (sqlite3_file*)(p + 1);
  int rc = base_vfs->xOpen(base_vfs, name, p->real, flags, out_flags);
  const sqlite3_io_methods* rm = p->real->pMethods;
  if (rm != NULL) /* SQLite calls xClose whenever pMethods is set */
    p->base.pMethods = &ours[rm->iVersion >= 3 ? 2 : rm->iVersion >= 2 ? 1 : 0];
  return rc;
}

static int m_open(sqlite3_vfs* v, sqlite3_filename name, sqlite3_file* f, int flags, int* out_flags) {
  (void)v;
  mfile_t* p = (mfile_t*)f;
  int fd = -1;
  if ((flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL)) && name != NULL)
    fd = open(name, O_RDONLY | O_CLOEXEC);
  int rc = open_real(p, name, flags, out_flags, methods);
  if (rc == SQLITE_OK && fd >= 0)
    p->map = map_for(name, fd);
  if (fd >= 0)
    close(fd); /* the map keeps the file */
  return rc;
}

static sqlite3_io_methods gmethods[3]; /* the store's, as methods[] */

static int s_open(sqlite3_vfs* v, sqlite3_filename name, sqlite3_file* f, int flags, int* out_flags) {
  (void)v;
  mfile_t* p = (mfile_t*)f;
  int rc = open_real(p, name, flags, out_flags, gmethods);
  return rc == SQLITE_OK ? gather_open(p, name, flags) : rc;
}

/* The VFS's other functions are the base VFS's. */
static int v_delete(sqlite3_vfs* v, const char* name, int sync) {
  (void)v;
  return base_vfs->xDelete(base_vfs, name, sync);
}
static int v_access(sqlite3_vfs* v, const char* name, int flags, int* out) {
  (void)v;
  return base_vfs->xAccess(base_vfs, name, flags, out);
}
static int v_full(sqlite3_vfs* v, const char* name, int n, char* out) {
  (void)v;
  return base_vfs->xFullPathname(base_vfs, name, n, out);
}
static void* v_dlopen(sqlite3_vfs* v, const char* name) {
  (void)v;
  return base_vfs->xDlOpen(base_vfs, name);
}
static void v_dlerror(sqlite3_vfs* v, int n, char* out) {
  (void)v;
  base_vfs->xDlError(base_vfs, n, out);
}
static void (*v_dlsym(sqlite3_vfs* v, void* h, const char* sym))(void) {
  (void)v;
  return base_vfs->xDlSym(base_vfs, h, sym);
}
static void v_dlclose(sqlite3_vfs* v, void* h) {
  (void)v;
  base_vfs->xDlClose(base_vfs, h);
}
static int v_random(sqlite3_vfs* v, int n, char* out) {
  (void)v;
  return base_vfs->xRandomness(base_vfs, n, out);
}
static int v_sleep(sqlite3_vfs* v, int us) {
  (void)v;
  return base_vfs->xSleep(base_vfs, us);
}
static int v_time(sqlite3_vfs* v, double* out) {
  (void)v;
  return base_vfs->xCurrentTime(base_vfs, out);
}
static int v_last_error(sqlite3_vfs* v, int n, char* out) {
  (void)v;
  return base_vfs->xGetLastError ? base_vfs->xGetLastError(base_vfs, n, out) : 0;
}
static int v_time64(sqlite3_vfs* v, sqlite3_int64* out) {
  (void)v;
  return base_vfs->xCurrentTimeInt64(base_vfs, out);
}
static int v_set_syscall(sqlite3_vfs* v, const char* name, sqlite3_syscall_ptr fn) {
  (void)v;
  return base_vfs->xSetSystemCall(base_vfs, name, fn);
}
static sqlite3_syscall_ptr v_get_syscall(sqlite3_vfs* v, const char* name) {
  (void)v;
  return base_vfs->xGetSystemCall(base_vfs, name);
}
static const char* v_next_syscall(sqlite3_vfs* v, const char* name) {
  (void)v;
  return base_vfs->xNextSystemCall(base_vfs, name);
}

static const char* registered; /* MAP_VFS, or NULL: not available */
static sqlite3_vfs svfs;
static const char* sregistered; /* STORE_VFS, or NULL */

static void setup_once(void) {
  base_vfs = sqlite3_vfs_find(NULL);
  if (base_vfs == NULL || base_vfs->iVersion < 2 || uv_mutex_init(&maps_mu) != 0)
    return;
  sqlite3_io_methods io = {
    3, m_close, m_read, m_write, m_truncate, m_sync, m_file_size, m_lock, m_unlock, m_check_lock,
    m_fcntl, m_sector, m_devchar, m_shm_map, m_shm_lock, m_shm_barrier, m_shm_unmap, m_fetch, m_unfetch,
  };
  sqlite3_io_methods gio = {
    3, g_close, g_read, g_write, g_truncate, g_sync, g_file_size, g_lock, g_unlock, g_check_lock,
    g_fcntl, m_sector, m_devchar, m_shm_map, g_shm_lock, g_shm_barrier, m_shm_unmap, g_fetch, m_unfetch,
  };
  for (int i = 0; i < 3; i++) {
    methods[i] = io;
    gmethods[i] = gio;
    methods[i].iVersion = gmethods[i].iVersion = i + 1;
  }
  vfs = (sqlite3_vfs){
    base_vfs->iVersion < 3 ? 2 : 3, /* 3: the base VFS's system calls too */
    (int)sizeof(mfile_t) + base_vfs->szOsFile, base_vfs->mxPathname, NULL, MAP_VFS, NULL,
    m_open, v_delete, v_access, v_full, v_dlopen, v_dlerror, v_dlsym, v_dlclose, v_random, v_sleep,
    v_time, v_last_error, v_time64, v_set_syscall, v_get_syscall, v_next_syscall,
  };
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER; /* SA_NODEFER: still deliverable after a siglongjmp */
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, &old_bus) != 0)
    return;
  if (sqlite3_vfs_register(&vfs, 0) == SQLITE_OK)
    registered = MAP_VFS;
  svfs = vfs;
  svfs.zName = STORE_VFS;
  svfs.xOpen = s_open;
  if (sqlite3_vfs_register(&svfs, 0) == SQLITE_OK)
    sregistered = STORE_VFS;
}

static uv_once_t once = UV_ONCE_INIT;

const char* ath__sqlite_map_vfs(void) {
  uv_once(&once, setup_once);
  return registered;
}

const char* ath__sqlite_store_vfs(void) {
  uv_once(&once, setup_once);
  return sregistered;
}
