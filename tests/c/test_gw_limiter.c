/* The gateway's rate-limit table (engine/gateway/gw_server.c, issue 13): a full
 * table forgets buckets that are back to a full burst first, never an
 * active lockout (a newcomer is refused instead), and counts IPv6 clients
 * by /64. A table of 4 buckets stands for the 65,536 of a server. */
#include "gw_server.h"
#include "task.h"

/* per_min = 1: one failure a minute, so a second failure is a lockout */
static int fail_slow(ath_gw_limiter_t* l, const char* ip) {
  return ath__gw_auth_failure(l, ip, 1);
}

TEST_IMPL(gw_limiter_full_table_keeps_lockouts) {
  ath_gw_limiter_t l;
  memset(&l, 0, sizeof(l));
  l.max = 4;
  ASSERT_EQ(0, fail_slow(&l, "10.0.0.1"));
  ASSERT_GT(fail_slow(&l, "10.0.0.1"), 0); /* locked out */
  /* three more addresses, each at its limit: the table is full of lockouts */
  ASSERT_EQ(0, fail_slow(&l, "10.0.0.2"));
  ASSERT_EQ(0, fail_slow(&l, "10.0.0.3"));
  ASSERT_EQ(0, fail_slow(&l, "10.0.0.4"));
  ASSERT_EQ(4, l.nbuckets);
  /* a newcomer finds no bucket it may forget: refused, nobody forgotten */
  for (int i = 0; i < 50; i++) {
    char ip[32];
    snprintf(ip, sizeof(ip), "10.1.0.%d", i);
    ASSERT_GT(fail_slow(&l, ip), 0);
  }
  ASSERT_GT(fail_slow(&l, "10.0.0.1"), 0); /* still locked out */
  ASSERT_GT(fail_slow(&l, "10.0.0.4"), 0);
  ath__gw_limiter_free(&l);
  return 0;
}

TEST_IMPL(gw_limiter_forgets_others_before_a_lockout) {
  ath_gw_limiter_t l;
  memset(&l, 0, sizeof(l));
  l.max = 4;
  ASSERT_EQ(0, fail_slow(&l, "10.0.0.1"));
  ASSERT_GT(fail_slow(&l, "10.0.0.1"), 0); /* a lockout, and the least recently used bucket */
  /* buckets that refill at once (a huge per-minute budget) are lossless to forget */
  for (int i = 0; i < 200; i++) {
    char ip[32];
    snprintf(ip, sizeof(ip), "10.2.%d.%d", i / 250, i % 250);
    ASSERT_EQ(0, ath__gw_auth_failure(&l, ip, 1e12));
  }
  ASSERT_EQ(4, l.nbuckets);
  ASSERT_GT(fail_slow(&l, "10.0.0.1"), 0); /* its lockout survived 200 newcomers */
  ath__gw_limiter_free(&l);
  return 0;
}

TEST_IMPL(gw_limiter_ipv6_by_64) {
  ath_gw_limiter_t l;
  memset(&l, 0, sizeof(l));
  ASSERT_EQ(0, fail_slow(&l, "2001:db8:1:2::1"));
  ASSERT_GT(fail_slow(&l, "2001:db8:1:2:ffff:ffff:ffff:ffff"), 0); /* same /64 */
  ASSERT_EQ(0, fail_slow(&l, "2001:db8:1:3::1"));                  /* another */
  ASSERT_EQ(0, fail_slow(&l, "192.0.2.7"));
  ASSERT_GT(fail_slow(&l, "::ffff:192.0.2.7"), 0); /* IPv4-mapped is that IPv4 address */
  ASSERT_EQ(3, l.nbuckets);
  ath__gw_limiter_free(&l);
  return 0;
}
