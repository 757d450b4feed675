/* Runs one C test by name: `athena_tests <name>`; without a name, lists them. */
#include <stdio.h>
#include <string.h>

#define TEST_ENTRY(name) int run_test_##name(void);
#include "athena.h"
#include "test_list.h"
#undef TEST_ENTRY

typedef struct {
  const char* name;
  int (*fn)(void);
} test_entry_t;

static const test_entry_t tests[] = {
#define TEST_ENTRY(name) {#name, run_test_##name},
#include "athena.h"
#include "test_list.h"
#undef TEST_ENTRY
  {NULL, NULL},
};

int main(int argc, char** argv) {
  const test_entry_t* t;
  ath_runtime_install(ath_lua_runtime()); /* as a C host does before starting worlds */
  if (argc < 2) {
    for (t = tests; t->name != NULL; t++)
      printf("%s\n", t->name);
    return 0;
  }
  for (t = tests; t->name != NULL; t++) {
    if (strcmp(t->name, argv[1]) == 0) {
      int rc = t->fn();
      if (rc == 0)
        printf("ok %s\n", t->name);
      return rc;
    }
  }
  fprintf(stderr, "no such test: %s\n", argv[1]);
  return 2;
}
