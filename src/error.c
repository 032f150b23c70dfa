/*
 * error.c - the error table, the version, and the release-build assertion.
 *
 * Every code, its name and its message come from CREW_ERRNO_MAP in crew.h, so the enum,
 * crew_strerror and crew_err_name cannot drift apart. Stateless; any thread.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>

const char *crew_version(void)
{
    return CREW_VERSION_STRING;
}

const char *crew_strerror(int rc)
{
    switch (rc) {
    case 0:
        return "success";
#define CREW__ERR_MSG(name, value, msg)                                                            \
    case CREW_E##name:                                                                             \
        return msg;
        CREW_ERRNO_MAP(CREW__ERR_MSG)
#undef CREW__ERR_MSG
    default:
        /* strerrordesc_np, unlike strerror, returns a static string (or NULL), so this
         * stays thread-safe. */
        if (rc < 0 && rc > -4096) {
            const char *d = strerrordesc_np(-rc);
            if (d)
                return d;
        }
        return "unknown error";
    }
}

const char *crew_err_name(int rc)
{
    switch (rc) {
    case 0:
        return "CREW_OK";
#define CREW__ERR_NAME(name, value, msg)                                                           \
    case CREW_E##name:                                                                             \
        return "CREW_E" #name;
        CREW_ERRNO_MAP(CREW__ERR_NAME)
#undef CREW__ERR_NAME
    default:
        return "CREW_E?";
    }
}

_Noreturn void crew__assert_fail(const char *what, const char *file, int line)
{
    /* The one place the library writes to stderr: a broken invariant, just before abort. */
    fprintf(stderr, "libcrew: assertion failed: %s (%s:%d)\n", what, file, line);
    abort();
}
