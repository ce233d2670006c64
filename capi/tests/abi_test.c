/*
 * Drives the C ABI the way an application does; used by tests/cli/c_abi.rs.
 *
 *   abi_test check   STATE_DIR NOW [TCTI] [MACHINE_ID_FILE]
 *   abi_test install STATE_DIR NOW PASS [TCTI] [MACHINE_ID_FILE]
 *   abi_test refresh STATE_DIR NOW FILE [TCTI] [MACHINE_ID_FILE]
 *   abi_test status  STATE_DIR NOW [TCTI] [MACHINE_ID_FILE]
 *   abi_test null
 *
 * Prints the JSON the library returned on one line and exits with its status code, after
 * checking that the struct members agree with the return value.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "hwpass.h"

static const char *arg(int argc, char **argv, int i) {
    return (i < argc && argv[i][0] != '\0') ? argv[i] : NULL;
}

static int verdict(int code, hwpass_verdict *v) {
    if (v == NULL) { fprintf(stderr, "no verdict\n"); return 100; }
    if (v->exit_code != code) { fprintf(stderr, "exit_code %d != %d\n", v->exit_code, code); return 101; }
    if (v->status == NULL || v->message == NULL || v->json == NULL) { fprintf(stderr, "missing strings\n"); return 102; }
    if (code == 0 && (v->subject == NULL || v->expires_at == 0 || v->hint != NULL)) { fprintf(stderr, "valid verdict incomplete\n"); return 103; }
    if (code != 0 && v->hint == NULL) { fprintf(stderr, "no hint\n"); return 104; }
    printf("%s\n", v->json);
    hwpass_verdict_free(v);
    return code;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "null") == 0) {
        /* Null where a pass is required: a usage error, never a crash. */
        hwpass_verdict *v = NULL;
        int code = hwpass_install(NULL, NULL, NULL, 1, &v);
        printf("{\"install_null\":%d,\"verdict\":%s,\"version\":\"%s\"}\n", code, v ? "true" : "false", hwpass_version());
        hwpass_string_free(NULL);
        hwpass_verdict_free(NULL);
        return code;
    }
    if (argc < 4) { fprintf(stderr, "usage: abi_test check|install|refresh|status STATE_DIR NOW ...\n"); return 64; }
    const char *cmd = argv[1], *dir = argv[2];
    long long now = atoll(argv[3]);
    int extra = (strcmp(cmd, "install") == 0 || strcmp(cmd, "refresh") == 0) ? 1 : 0;
    hwpass_options options = { .tcti = arg(argc, argv, 4 + extra), .machine_id_file = arg(argc, argv, 5 + extra) };
    if (strcmp(cmd, "check") == 0) {
        hwpass_verdict *v = NULL;
        int code = hwpass_check(dir, &options, now, &v);
        return verdict(code, v);
    }
    if (strcmp(cmd, "install") == 0) {
        hwpass_verdict *v = NULL;
        int code = hwpass_install(dir, &options, argv[4], now, &v);
        return verdict(code, v);
    }
    char *json = NULL;
    int code = strcmp(cmd, "refresh") == 0
        ? hwpass_refresh_file(dir, &options, argv[4], now, &json)
        : hwpass_status(dir, &options, now, &json);
    if (json == NULL) { fprintf(stderr, "no json\n"); return 105; }
    printf("%s\n", json);
    hwpass_string_free(json);
    return code;
}
