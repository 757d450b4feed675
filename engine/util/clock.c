/* Clocks, ids and hashing. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <uv.h>
#include "util.h"

int64_t ath__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t ath__mono_ns(void) {
  return uv_hrtime();
}

/* Per-thread xoshiro256** state, seeded from getrandom(): ids need to be
 * unique, not secret, and a syscall per id would cost more than the task. */
static _Thread_local uint64_t rng[4];
static _Thread_local int rng_seeded;

static uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void) {
  if (!rng_seeded) {
    if (getrandom(rng, sizeof(rng), 0) != sizeof(rng)) {
      /* No entropy source: mix the clocks and the thread's address. */
      rng[0] = uv_hrtime();
      rng[1] = (uint64_t)ath__now_ms();
      rng[2] = (uint64_t)(uintptr_t)&rng;
      rng[3] = 0x9e3779b97f4a7c15ull;
    }
    rng_seeded = 1;
  }
  uint64_t result = rotl(rng[1] * 5, 7) * 9;
  uint64_t t = rng[1] << 17;
  rng[2] ^= rng[0];
  rng[3] ^= rng[1];
  rng[1] ^= rng[2];
  rng[0] ^= rng[3];
  rng[2] ^= t;
  rng[3] = rotl(rng[3], 45);
  return result;
}

double ath__random01(void) {
  return (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0);
}

static void uuid_text(unsigned char u[16], char out[37]) {
  static const char hex[] = "0123456789abcdef";
  char* p = out;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10)
      *p++ = '-';
    *p++ = hex[u[i] >> 4];
    *p++ = hex[u[i] & 15];
  }
  *p = '\0';
}

static void random_bytes(unsigned char u[16]) {
  uint64_t a = rng_next(), b = rng_next();
  for (int i = 0; i < 8; i++) {
    u[i] = (unsigned char)(a >> (i * 8));
    u[8 + i] = (unsigned char)(b >> (i * 8));
  }
}

void ath__uuid4(char out[37]) {
  unsigned char u[16];
  random_bytes(u);
  u[6] = (u[6] & 0x0f) | 0x40; /* version 4 */
  u[8] = (u[8] & 0x3f) | 0x80; /* variant 10 */
  uuid_text(u, out);
}

/* RFC 9562 version 7: 48 bits of Unix ms, then a 12-bit counter that keeps
 * the ids one thread makes within a millisecond in order (it starts at a
 * random value below 2048 each millisecond), then 62 random bits. Ids made
 * one after another sort by time, so an index on them grows at its end. */
void ath__uuid7(char out[37]) {
  static _Thread_local uint64_t last_ms;
  static _Thread_local unsigned counter;
  uint64_t ms = (uint64_t)ath__now_ms();
  unsigned char u[16];
  random_bytes(u);
  if (ms > last_ms) {
    last_ms = ms;
    counter = (unsigned)(rng_next() & 0x7ff);
  } else if (++counter > 0xfff) { /* 2,048+ ids this millisecond: borrow the next one */
    last_ms++;
    counter = 0;
  }
  ms = last_ms;
  for (int i = 0; i < 6; i++)
    u[i] = (unsigned char)(ms >> (40 - 8 * i));
  u[6] = (unsigned char)(0x70 | (counter >> 8)); /* version 7 */
  u[7] = (unsigned char)(counter & 0xff);
  u[8] = (u[8] & 0x3f) | 0x80; /* variant 10 */
  uuid_text(u, out);
}

uint64_t ath__hash_str(const char* s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) {
    h ^= (unsigned char)*s;
    h *= 1099511628211ull;
  }
  return h;
}

/* The task table's hash: eight bytes a step (a task id is ~42 bytes, and
 * the table hashes one on every insert, lookup and removal), finished with
 * murmur3's mixer so the low bits a power-of-two table uses are spread.
 * In-process only: names shared between nodes use ath__hash_str. */
uint64_t ath__hash_id(const char* s) {
  size_t len = strlen(s);
  uint64_t h = 0x9e3779b97f4a7c15ull ^ len, w;
  for (; len >= 8; s += 8, len -= 8) {
    memcpy(&w, s, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 29;
  }
  w = 0;
  memcpy(&w, s, len);
  h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

const char* ath_version(void) {
  return ATHENA_VERSION;
}

const char* ath_status_name(ath_status_t s) {
  static const char* names[] = {"pending",   "scheduled", "running",
                                "retrying",  "compensating", "completed",
                                "failed",    "cancelled", "quarantined",
                                "compensated"};
  if ((unsigned)s < sizeof(names) / sizeof(names[0]))
    return names[s];
  return "unknown";
}
