/*
 * json.c - --json: one JSON object per finished job, rendered with jansson.
 *
 * {"seq":1,"args":["a"],"command":"echo a","exit":0,"signal":0,"timed_out":false,
 *  "attempts":1,"slot":1,"start":1795470000.123,"runtime":0.004,"stdout":"a\n",
 *  "stderr":""}
 * JSON strings must be UTF-8: bytes of a job's output that are not valid UTF-8 become
 * U+FFFD, so every line is valid JSON whatever the job printed (NUL bytes stay, as \u0000).
 * The output is read back whole from the capture (a job printing gigabytes makes as big an
 * object: --json is for jobs whose output is a result, not a stream).
 *
 * jansson is loaded with dlopen(3) when --json is given (json_load, before any job), not
 * linked: a run without --json would otherwise pay for loading and relocating it at every
 * start, a measurable part of a one-job run. Its header is still what the calls are
 * checked against, through __typeof__ (as metrics_http.c does for libmicrohttpd).
 *
 * Threads: any worker; jansson objects are private to the call. The function table is
 * written once by the main thread before the pool starts.
 */
#include "cli.h"

#include <dlfcn.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#ifndef CREW_JANSSON_SONAME
#define CREW_JANSSON_SONAME "libjansson.so.4"
#endif

/* The jansson functions crew calls, resolved by json_load(). */
static struct {
    void *lib;
    __typeof__(&json_array) array;
    __typeof__(&json_array_append_new) array_append_new;
    __typeof__(&json_stringn) stringn;
    __typeof__(&json_stringn_nocheck) stringn_nocheck;
    __typeof__(&json_pack) pack;
    __typeof__(&json_dumps) dumps;
    __typeof__(&json_delete) delete_;
} js;

int json_load(void)
{
    js.lib = dlopen(CREW_JANSSON_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!js.lib) {
        msg("--json: cannot load %s: %s", CREW_JANSSON_SONAME, dlerror());
        return -ENOENT;
    }
    /* POSIX lets a void * from dlsym become a function pointer; ISO C does not say. */
#define RESOLVE(field, name)                                                                       \
    *(void **)&js.field = dlsym(js.lib, name);                                                     \
    if (!js.field) {                                                                               \
        msg("--json: %s lacks %s", CREW_JANSSON_SONAME, name);                                     \
        dlclose(js.lib);                                                                           \
        js.lib = NULL;                                                                             \
        return -ENOENT;                                                                            \
    }
    RESOLVE(array, "json_array")
    RESOLVE(array_append_new, "json_array_append_new")
    RESOLVE(stringn, "json_stringn")
    RESOLVE(stringn_nocheck, "json_stringn_nocheck")
    RESOLVE(pack, "json_pack")
    RESOLVE(dumps, "json_dumps")
    RESOLVE(delete_, "json_delete")
#undef RESOLVE
    return 0;
}

/* json_decref, whose inline body in jansson.h would call json_delete by name. */
static void decref(json_t *v)
{
    if (v && v->refcount != (size_t)-1 && JSON_INTERNAL_DECREF(v) == 0)
        js.delete_(v);
}

/* The length of the valid UTF-8 sequence at p (at most n bytes), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    size_t len;
    unsigned min;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* A JSON string of the n bytes at s, invalid UTF-8 replaced. */
static json_t *text(const char *s, size_t n)
{
    json_t *v = js.stringn(s, n);
    if (v)
        return v;
    strbuf b = {0};
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_len(p + i, n - i);
        if (len ? sb_put(&b, p + i, len) : sb_puts(&b, "\xef\xbf\xbd")) {
            sb_free(&b);
            return NULL;
        }
        i += len ? len : 1;
    }
    v = js.stringn_nocheck(b.p ? b.p : "", b.len);
    sb_free(&b);
    return v;
}

/* A JSON string of a captured stream. */
static json_t *stream(const outbuf *b)
{
    char *s;
    size_t n;
    if (outbuf_dup(b, &s, &n))
        return NULL;
    json_t *v = text(s, n);
    free(s);
    return v;
}

/* json_pack takes ownership of the "o" values, including a NULL from a failed allocation
 * (then the whole pack fails and NULL comes back): nothing leaks on any path. */
char *json_render(const job *j, size_t *len)
{
    json_t *args = js.array();
    for (unsigned k = 0; args && k < j->nargs; k++)
        js.array_append_new(args, text(j->args[k], strlen(j->args[k])));
    const char *cmd = j->command ? j->command : "";
    json_t *o =
        js.pack("{s:I, s:o, s:o, s:i, s:i, s:b, s:i, s:i, s:f, s:f, s:o, s:o}", "seq",
                (json_int_t)j->seq, "args", args, "command", text(cmd, strlen(cmd)), "exit",
                j->exit_code, "signal", j->sig, "timed_out", (int)j->timed_out, "attempts",
                (int)j->attempts, "slot", (int)j->slot, "start", j->start_epoch, "runtime",
                (double)j->runtime / 1e9, "stdout", stream(j->outp), "stderr", stream(j->errp));
    if (!o)
        return NULL;
    char *s = js.dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    decref(o);
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *line = realloc(s, n + 2);
    if (!line) {
        free(s);
        return NULL;
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    *len = n + 1;
    return line;
}
