/* Clocks, ids and hashing. */
#include <stdatomic.h>
#include <stdio.h>
#include <sys/random.h>
#include <time.h>
#include "internal.h"

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

void ath__uuid4(char out[37]) {
  static const char hex[] = "0123456789abcdef";
  uint64_t a = rng_next(), b = rng_next();
  unsigned char u[16];
  for (int i = 0; i < 8; i++) {
    u[i] = (unsigned char)(a >> (i * 8));
    u[8 + i] = (unsigned char)(b >> (i * 8));
  }
  u[6] = (u[6] & 0x0f) | 0x40; /* version 4 */
  u[8] = (u[8] & 0x3f) | 0x80; /* variant 10 */
  char* p = out;
  for (int i = 0; i < 16; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10)
      *p++ = '-';
    *p++ = hex[u[i] >> 4];
    *p++ = hex[u[i] & 15];
  }
  *p = '\0';
}

uint64_t ath__hash_str(const char* s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) {
    h ^= (unsigned char)*s;
    h *= 1099511628211ull;
  }
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
