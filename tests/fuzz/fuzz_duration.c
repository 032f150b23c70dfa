/*
 * fuzz_duration - libFuzzer target for crew_duration_parse (src/clock.c), the one parser of
 * the core. Besides ASan and UBSan finding memory and arithmetic errors, each input checks:
 * the result is 0, CREW_EINVAL or CREW_ERANGE; on error the output is untouched; a parsed
 * duration is never negative; and it reads back the same from its canonical "<n>ns" form.
 */
#include "crew.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char s[128];
    if (size >= sizeof s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    const int64_t untouched = -12345;
    int64_t v = untouched;
    int rc = crew_duration_parse(s, &v);
    if (rc != 0 && rc != CREW_EINVAL && rc != CREW_ERANGE)
        abort();
    if (rc != 0) {
        if (v != untouched)
            abort();
        return 0;
    }
    if (v < 0)
        abort();
    char canon[32];
    snprintf(canon, sizeof canon, "%" PRId64 "ns", v);
    int64_t back = untouched;
    if (crew_duration_parse(canon, &back) != 0 || back != v)
        abort();
    return 0;
}
