/* A SQLite VFS for tests only: it wraps the default (unix) VFS and, on the
 * files of an Athena store (athena.db and its -wal), injects a full disk or
 * I/O errors on demand and simulates a power cut. Registered by the test
 * binary only (faultvfs_install makes it SQLite's default VFS, so the store
 * uses it without any hook in the engine).
 *
 * A power cut: every write and truncate that no xSync covered yet is
 * recorded (old and new bytes). At operation number `cut` (writes, syncs
 * and truncates of those files, counted from 1) the operation is not done;
 * instead each unsynced change is kept or dropped at random (a disk may
 * persist any subset of what was not synced, in any order), the files are
 * rewritten to that state, and the process ends at once with _exit(0):
 * nothing else reaches the disk, as when the power goes. The -shm file is
 * not modelled (SQLite rebuilds it when the first connection opens). */
#ifndef ATHENA_TEST_FAULTVFS_H
#define ATHENA_TEST_FAULTVFS_H

#include <stdint.h>

/* Registers the VFS as the default one. Idempotent. */
void faultvfs_install(void);
/* From now on, writes (resp. syncs) of the store's files fail with this
 * SQLite code (SQLITE_FULL, SQLITE_IOERR_WRITE, SQLITE_IOERR_FSYNC...);
 * 0 lets them through again. */
void faultvfs_fail_writes(int sqlite_rc);
void faultvfs_fail_syncs(int sqlite_rc);
/* The `n`th write or sync of the store's files from now (n >= 1) fails,
 * once: a write with `rc`, a sync with SQLITE_IOERR_FSYNC. */
void faultvfs_fail_once(int64_t n, int rc);
/* Writes and syncs refused so far. */
int64_t faultvfs_refused(void);
/* Arms a power cut at operation `cut` (0: none); `seed` picks what of the
 * unsynced changes survives; `keep_none`: drop them all. */
void faultvfs_arm_cut(int64_t cut, unsigned seed, int keep_none);
/* Operations counted so far (writes, syncs, truncates of the store's files). */
int64_t faultvfs_ops(void);
/* Calls fn after each sync of the store's files that succeeded (on the
 * syncing thread, no lock of the VFS held). */
void faultvfs_on_sync(void (*fn)(void));
/* Cuts the power now (as if operation `cut` had come): does not return. */
void faultvfs_cut_now(void);

#endif
