/* Check this desktop's hwpass pass from C: the same verdict as `hwpass check --json`. */
#include <stdio.h>
#include "hwpass.h"

int main(int argc, char **argv) {
    const char *state_dir = argc > 1 ? argv[1] : NULL; /* NULL: the default directory */
    hwpass_options options = { .tcti = NULL, .machine_id_file = NULL };
    hwpass_verdict *v = NULL;

    int code = hwpass_check(state_dir, &options, 0 /* now: the system clock */, &v);
    if (v == NULL) {
        fprintf(stderr, "hwpass: usage error (%d)\n", code);
        return code;
    }
    if (code == 0) {
        printf("valid for %s, %lld s left\n", v->subject, (long long)v->remaining_seconds);
        if (v->renew)
            fprintf(stderr, "%s\n", v->warning);
    } else {
        fprintf(stderr, "%s: %s\nhint: %s\n", v->status, v->message, v->hint ? v->hint : "");
    }
    hwpass_verdict_free(v);
    return code; /* 0 valid, 5 expired, 7 clock rollback, 8 revoked, … */
}
