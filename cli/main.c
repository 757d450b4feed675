/* The `athena` executable: a Lua 5.4 host like lua.c, with `athena`
 * preloaded (embedded) and the global `athena` set.
 *
 *   athena script.lua [args...]   run a script (global `arg` as lua sets it)
 *   athena -e CODE                run a chunk
 *   athena --progress ...         a live status line on stderr (a TTY)
 *   athena serve [options]        lua/athena/serve.lua
 *   athena tasks|show|requeue|purge|schedules ...   lua/athena/ops.lua
 *   athena --version | --help
 *
 * A script error prints the message and a traceback to stderr and exits 1;
 * a usage error exits 2. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include "athena.h"

void lath_openstate(lua_State* L);
void lath_progress_stop(void);

static const char* progname = "athena";

static void usage(FILE* f) {
  fprintf(f,
          "usage: %s [options] [script.lua [args...]]\n"
          "       %s serve [--db URL [--config FILE]] [--host H] [--port P] [--progress]\n"
          "                    [--persistence memory|file|hybrid] [--path DIR] [--modules a,b] [--workers N]\n"
          "       %s tasks [--status S] [--name N] [--limit K] [--json] --path DIR\n"
          "       %s show ID [--json] --path DIR\n"
          "       %s requeue ID --path DIR | purge ID --path DIR\n"
          "       %s schedules [--json] --path DIR\n"
          "  -e CODE      run CODE\n"
          "  --progress   a live status line on stderr when it is a terminal\n"
          "  --version    print the version\n"
          "  --help       this text\n"
          "With a script, runs it like lua5.4 does, with `athena` preloaded.\n"
          "`serve` starts a world whose workers load the given modules, recovers\n"
          "what --path holds, and serves /healthz, /metrics, /api and the dashboard\n"
          "(with --db, also the database gateway configured by --config) until SIGINT\n"
          "or SIGTERM, then shuts down gracefully; SIGHUP re-reads the gateway's catalog.\n"
          "`tasks`, `show` and `schedules` read the store of a file or hybrid world\n"
          "(also while it runs); `requeue` and `purge` change a quarantined task of a\n"
          "store that no running world holds.\n",
          progname, progname, progname, progname, progname, progname);
}

/* Subcommands: the Lua module whose function runs them, whether it gets
 * the command's name as first argument, and the exit status of a raise. */
typedef struct {
  const char* name;
  const char* module;
  int with_name;
  int error_status;
} command_t;

static const command_t commands[] = {
  {"serve", "athena.serve", 0, 2},  {"tasks", "athena.ops", 1, 1},
  {"show", "athena.ops", 1, 1},     {"requeue", "athena.ops", 1, 1},
  {"purge", "athena.ops", 1, 1},    {"schedules", "athena.ops", 1, 1},
};

static const command_t* find_command(const char* name) {
  for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
    if (strcmp(commands[i].name, name) == 0)
      return &commands[i];
  return NULL;
}

/* lua.c's msghandler: a traceback for string errors, __tostring for others. */
static int msghandler(lua_State* L) {
  const char* msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static int report(lua_State* L, int status) {
  if (status != LUA_OK) {
    fprintf(stderr, "%s: %s\n", progname, lua_tostring(L, -1));
    fflush(stderr);
    lua_pop(L, 1);
  }
  return status;
}

static int docall(lua_State* L, int narg) {
  int base = lua_gettop(L) - narg;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  int status = lua_pcall(L, narg, 0, base);
  lua_remove(L, base);
  return status;
}

/* Builds `arg` like lua.c: script at 0, its arguments from 1, the
 * interpreter and options at negative indexes. */
static void create_arg(lua_State* L, char** argv, int argc, int script) {
  lua_createtable(L, argc - script - 1, script + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int run_script(lua_State* L, char** argv, int argc, int script) {
  int status = luaL_loadfile(L, argv[script]);
  if (status != LUA_OK)
    return report(L, status);
  int n = argc - script - 1;
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (int i = script + 1; i < argc; i++)
    lua_pushstring(L, argv[i]);
  return report(L, docall(L, n));
}

/* Runs in protected mode so memory errors while setting up are reported. */
static int pmain(lua_State* L) {
  int argc = (int)lua_tointeger(L, 1);
  char** argv = lua_touserdata(L, 2);
  lath_openstate(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "athena");
  if (docall(L, 1) != LUA_OK)
    return lua_error(L);
  lua_getglobal(L, "require"); /* docall(…, 0) discards results: load again */
  lua_pushliteral(L, "athena");
  lua_call(L, 1, 1);
  lua_setglobal(L, "athena");

  const command_t* cmd = argc >= 2 ? find_command(argv[1]) : NULL;
  if (cmd != NULL) {
    create_arg(L, argv, argc, 1);
    lua_getglobal(L, "require");
    lua_pushstring(L, cmd->module);
    lua_call(L, 1, 1);
    int first = cmd->with_name ? 1 : 2;
    luaL_checkstack(L, argc, "too many arguments");
    for (int i = first; i < argc; i++)
      lua_pushstring(L, argv[i]);
    int base = lua_gettop(L) - (argc - first) - 1;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base + 1);
    int st = lua_pcall(L, argc - first, 1, base + 1);
    if (report(L, st) != LUA_OK) {
      lua_pushinteger(L, cmd->error_status);
      return 1;
    }
    lua_pushinteger(L, lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0);
    return 1;
  }
  int script = 0;
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    if (strcmp(a, "--version") == 0 || strcmp(a, "-v") == 0) {
      printf("athena %s (%s)\n", ath_version(), LUA_RELEASE);
      lua_pushinteger(L, 0);
      return 1;
    } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      lua_pushinteger(L, 0);
      return 1;
    } else if (strcmp(a, "-e") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "%s: '-e' needs an argument\n", progname);
        usage(stderr);
        lua_pushinteger(L, 2);
        return 1;
      }
      create_arg(L, argv, argc, 0);
      int st = luaL_loadbuffer(L, argv[i + 1], strlen(argv[i + 1]), "=(command line)");
      if (st == LUA_OK)
        st = docall(L, 0);
      if (report(L, st) != LUA_OK) {
        lua_pushinteger(L, 1);
        return 1;
      }
      i++;
      script = -1; /* ran something */
    } else if (strcmp(a, "--progress") == 0) {
      lua_getglobal(L, "require"); /* World.new then watches each world */
      lua_pushliteral(L, "athena.ops");
      lua_call(L, 1, 1);
      lua_getfield(L, -1, "enableProgress");
      lua_call(L, 0, 0);
      lua_pop(L, 1);
    } else if (strcmp(a, "--") == 0) {
      if (i + 1 < argc)
        script = i + 1;
      break;
    } else if (a[0] == '-' && a[1] != '\0') {
      fprintf(stderr, "%s: unrecognized option '%s'\n", progname, a);
      usage(stderr);
      lua_pushinteger(L, 2);
      return 1;
    } else {
      script = i;
      break;
    }
  }
  if (script > 0) {
    create_arg(L, argv, argc, script);
    lua_pushinteger(L, run_script(L, argv, argc, script) == LUA_OK ? 0 : 1);
    return 1;
  }
  if (script == 0) {
    usage(stderr);
    lua_pushinteger(L, 2);
    return 1;
  }
  lua_pushinteger(L, 0);
  return 1;
}

int main(int argc, char** argv) {
  if (argv[0] && argv[0][0])
    progname = "athena";
  signal(SIGPIPE, SIG_IGN);
  if (argc >= 2 && strcmp(argv[1], "serve") == 0) {
    /* block them before any thread starts, so sigwait() gets them */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
  }
  lua_State* L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "%s: cannot create state: not enough memory\n", progname);
    return 1;
  }
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  int status = lua_pcall(L, 2, 1, 0);
  int rc = 1;
  if (status == LUA_OK)
    rc = (int)lua_tointeger(L, -1);
  else
    report(L, status);
  lath_progress_stop(); /* the last status line, before the worlds close */
  lua_close(L); /* closes worlds: they drain and join their threads */
  return rc;
}
