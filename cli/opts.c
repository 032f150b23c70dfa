/*
 * opts.c - the command line: options, the command template, ::: and :::: sources.
 *
 * Options come first (getopt_long stops at the first word that is not one, as GNU
 * parallel's do, so a job's own options are never taken for crew's); then the command's
 * words up to the first ::: or ::::; then the sources: `::: a b c` is a list, `:::: f g`
 * makes one source per file. A bad option prints one line naming it and what was expected,
 * then "Try 'crew --help'", and crew exits 255.
 *
 * Threads: the main thread, before anything else starts.
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "Usage: crew [OPTION]... [COMMAND [ARG]...] [::: ARG... | :::: FILE...]...\n"
    "Run COMMAND once per input argument, many at a time, like xargs -P or GNU parallel.\n"
    "\n"
    "Input (default: standard input, one argument per line):\n"
    "  -a, --arg-file FILE    read arguments from FILE (repeatable)\n"
    "  ::: A B C              arguments from the command line; several ::: groups give\n"
    "                         every combination\n"
    "  :::: FILE...           arguments from each FILE, combined as ::: groups are\n"
    "  -0, --null             arguments end with NUL, not newline\n"
    "  -d, --delimiter C      arguments end with the character C (\\n, \\t, \\0 allowed)\n"
    "      --queue N          read at most N jobs ahead of the running ones (default -j)\n"
    "\n"
    "Command: {} the argument, {.} without extension, {/} basename, {//} dirname,\n"
    "  {/.} basename without extension, {#} job number, {%} slot number, {N} {N.} {N/}\n"
    "  {N//} {N/.} the N-th source's argument. With none, the arguments are appended.\n"
    "  Substituted values are quoted for the shell. No COMMAND: each argument is a command.\n"
    "\n"
    "Running:\n"
    "  -j, --jobs N|N%|+N|-N  run N jobs at once; N% of the CPUs; CPUs+N (default: CPUs)\n"
    "      --dry-run          print the commands, run nothing\n"
    "      --timeout DUR      stop a job after DUR (500ms, 30s, 1m30s): SIGTERM to its\n"
    "                         process group, then SIGKILL\n"
    "      --kill-after DUR   from SIGTERM to SIGKILL (default 2s)\n"
    "      --retries N        run a failed job up to N more times\n"
    "      --retry-delay DUR  backoff base before a retry: random up to DUR*2^(n-1),\n"
    "                         at most 30s (default 100ms)\n"
    "      --rate N[/s|/m|/h] start at most N jobs per second (minute, hour)\n"
    "      --delay DUR        wait at least DUR between two job starts\n"
    "      --memfree SIZE     start no job while available memory is below SIZE (1G)\n"
    "      --load N           start no job while more than N tasks are runnable\n"
    "      --halt WHEN,WHY=N  stop early: WHEN is now (kill running jobs) or soon (let\n"
    "                         them finish); WHY is fail=N, fail=P%, success=N, done=N\n"
    "\n"
    "Output (default: each job's output printed whole when it ends):\n"
    "  -k, --keep-order       print in input order\n"
    "      --line-buffer      print each line as soon as it is complete\n"
    "  -u, --ungroup          jobs write straight to crew's stdout and stderr\n"
    "      --tag              prefix each line with the job's arguments and a tab\n"
    "      --json             print one JSON object per job (seq, args, exit, signal,\n"
    "                         runtime, stdout, stderr) instead of its output\n"
    "      --joblog FILE      log each finished job (GNU parallel's format)\n"
    "      --resume           skip the jobs --joblog FILE lists\n"
    "      --resume-failed    skip the jobs it lists as succeeded; rerun the failed\n"
    "      --bar              progress bar on stderr (when it is a terminal)\n"
    "      --eta              estimated time left on stderr\n"
    "      --metrics ADDR     serve Prometheus metrics on [HOST:]PORT (loopback default)\n"
    "  -q, --quiet            no summary line at the end\n"
    "  -h, --help             this help;  -V, --version  the version\n"
    "\n"
    "Signals: the first SIGINT/SIGTERM (or SIGHUP) starts no more jobs and waits for the\n"
    "running ones; the second terminates them; the third kills them.\n"
    "Exit status: 0 all succeeded; 1-100 that many failed; 101 more than 100 failed;\n"
    "128+N stopped by signal N; 255 other errors. See crew(1).\n";

enum {
    O_QUEUE = 256,
    O_DRYRUN,
    O_TIMEOUT,
    O_KILLAFTER,
    O_RETRIES,
    O_RETRYDELAY,
    O_RATE,
    O_DELAY,
    O_HALT,
    O_JOBLOG,
    O_RESUME,
    O_RESUMEFAILED,
    O_BAR,
    O_ETA,
    O_JSON,
    O_METRICS,
    O_MEMFREE,
    O_LOAD,
    O_LINEBUF,
    O_TAG,
};

static const struct option longopts[] = {
    {"jobs", required_argument, NULL, 'j'},
    {"arg-file", required_argument, NULL, 'a'},
    {"null", no_argument, NULL, '0'},
    {"delimiter", required_argument, NULL, 'd'},
    {"keep-order", no_argument, NULL, 'k'},
    {"ungroup", no_argument, NULL, 'u'},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {"queue", required_argument, NULL, O_QUEUE},
    {"dry-run", no_argument, NULL, O_DRYRUN},
    {"timeout", required_argument, NULL, O_TIMEOUT},
    {"kill-after", required_argument, NULL, O_KILLAFTER},
    {"retries", required_argument, NULL, O_RETRIES},
    {"retry-delay", required_argument, NULL, O_RETRYDELAY},
    {"rate", required_argument, NULL, O_RATE},
    {"delay", required_argument, NULL, O_DELAY},
    {"halt", required_argument, NULL, O_HALT},
    {"joblog", required_argument, NULL, O_JOBLOG},
    {"resume", no_argument, NULL, O_RESUME},
    {"resume-failed", no_argument, NULL, O_RESUMEFAILED},
    {"bar", no_argument, NULL, O_BAR},
    {"eta", no_argument, NULL, O_ETA},
    {"json", no_argument, NULL, O_JSON},
    {"metrics", required_argument, NULL, O_METRICS},
    {"memfree", required_argument, NULL, O_MEMFREE},
    {"load", required_argument, NULL, O_LOAD},
    {"line-buffer", no_argument, NULL, O_LINEBUF},
    {"lb", no_argument, NULL, O_LINEBUF},
    {"tag", no_argument, NULL, O_TAG},
    {NULL, 0, NULL, 0},
};

/* Prints the error line and the usage hint; returns EXIT_ERROR. Every message names the
 * option as the user knows it and says what was expected, then what was given. */
static int bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "crew: %s\nTry 'crew --help' for more information.\n", line);
    return EXIT_ERROR;
}

/* The name of the option being parsed, as the user wrote it ("--timeout" or "-j"). */
static const char *opt_name(int c, int longidx)
{
    static char s[3] = "-?";
    if (longidx >= 0)
        return NULL;
    s[1] = (char)c;
    return s;
}

/* A decimal number from 0 to max; no sign, no trailing text (strtoul alone would take
 * "-1" as a huge number and "5x" as 5). */
static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    errno = 0;
    if (*s == '-' || *s == '+')
        return -EINVAL;
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || *end || errno || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

/* -j: N, N% of the CPUs, or CPUs+N / CPUs-N, at least 1 (GNU parallel's forms, except
 * -j0, which GNU takes as "unlimited" and crew refuses: a bound is the point). */
static int parse_jobs(const char *s, unsigned *out)
{
    unsigned long ncpu = crew_ncpu(), v;
    size_t n = strlen(s);
    if (n > 1 && s[n - 1] == '%') {
        char tmp[32];
        if (n >= sizeof tmp)
            return -EINVAL;
        memcpy(tmp, s, n - 1);
        tmp[n - 1] = '\0';
        if (parse_uint(tmp, 1000000, &v) || v == 0)
            return -EINVAL;
        v = ncpu * v / 100;
        *out = v ? (unsigned)v : 1;
        return 0;
    }
    if (s[0] == '+' || s[0] == '-') {
        if (parse_uint(s + 1, 65536, &v))
            return -EINVAL;
        long j = s[0] == '+' ? (long)ncpu + (long)v : (long)ncpu - (long)v;
        *out = j < 1 ? 1 : (unsigned)j;
        return 0;
    }
    if (parse_uint(s, 65536, &v) || v == 0)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

/* -d: one byte, or one of the escapes a shell makes awkward to type. */
static int parse_delim(const char *s, char *out)
{
    if (s[0] && !s[1]) {
        *out = s[0];
        return 0;
    }
    if (s[0] == '\\' && s[1] && !s[2]) {
        switch (s[1]) {
        case 'n':
            *out = '\n';
            return 0;
        case 't':
            *out = '\t';
            return 0;
        case '0':
            *out = '\0';
            return 0;
        case '\\':
            *out = '\\';
            return 0;
        default:
            return -EINVAL;
        }
    }
    return -EINVAL;
}

/* --halt: never | now|soon,fail=N|fail=P%|success=N|success=P%|done=N|done=P%, and GNU's
 * old forms 0, 1, 2, -1, -2, P%. */
static int parse_halt(const char *s, opts *o)
{
    static const char *const legacy[][2] = {{"0", "never"},
                                            {"1", "soon,fail=1"},
                                            {"2", "now,fail=1"},
                                            {"-1", "soon,success=1"},
                                            {"-2", "now,success=1"}};
    for (size_t i = 0; i < sizeof legacy / sizeof legacy[0]; i++)
        if (strcmp(s, legacy[i][0]) == 0)
            s = legacy[i][1];
    char buf[64];
    size_t n = strlen(s);
    if (n > 1 && n < 8 && s[n - 1] == '%' && strchr(s, ',') == NULL) {
        snprintf(buf, sizeof buf, "soon,fail=%s", s);
        s = buf;
    }
    if (strcmp(s, "never") == 0) {
        o->halt_when = HALT_NEVER;
        return 0;
    }
    const char *comma = strchr(s, ',');
    if (!comma)
        return -EINVAL;
    if (strncmp(s, "now,", 4) == 0)
        o->halt_when = HALT_NOW;
    else if (strncmp(s, "soon,", 5) == 0)
        o->halt_when = HALT_SOON;
    else
        return -EINVAL;
    const char *why = comma + 1, *eq = strchr(why, '=');
    if (!eq)
        return -EINVAL;
    if (strncmp(why, "fail=", 5) == 0)
        o->halt_why = HALT_FAIL;
    else if (strncmp(why, "success=", 8) == 0)
        o->halt_why = HALT_SUCCESS;
    else if (strncmp(why, "done=", 5) == 0)
        o->halt_why = HALT_DONE;
    else
        return -EINVAL;
    char *end;
    errno = 0;
    double v = strtod(eq + 1, &end);
    if (end == eq + 1 || errno || !isfinite(v))
        return -EINVAL;
    o->halt_pct = *end == '%';
    if (o->halt_pct)
        end++;
    if (*end || v <= 0 || (o->halt_pct && v > 100) || (!o->halt_pct && v != floor(v)))
        return -EINVAL;
    o->halt_value = v;
    return 0;
}

static int add_source(opts *o, source_spec s)
{
    source_spec *p = realloc(o->sources, (o->nsources + 1) * sizeof *p);
    if (!p)
        return -ENOMEM;
    p[o->nsources++] = s;
    o->sources = p;
    return 0;
}

static int parse_duration(const char *opt, const char *s, int64_t *out, bool zero_ok)
{
    int64_t v;
    if (crew_duration_parse(s, &v) || v < 0 || (!zero_ok && v == 0))
        return bad("%s: expected a duration such as 500ms, 30s or 1m30s%s, got '%s'", opt,
                   zero_ok ? "" : " (above 0)", s);
    *out = v;
    return 0;
}

/* Splits the words after the options into the command and the ::: / :::: sources. */
static int parse_words(opts *o, int argc, char **argv, int i)
{
    int first = i;
    while (i < argc && strcmp(argv[i], ":::") != 0 && strcmp(argv[i], "::::") != 0)
        i++;
    o->cmd = argv + first;
    o->ncmd = (size_t)(i - first);
    while (i < argc) {
        bool files = strcmp(argv[i], "::::") == 0;
        int start = ++i;
        while (i < argc && strcmp(argv[i], ":::") != 0 && strcmp(argv[i], "::::") != 0)
            i++;
        if (files) {
            if (i == start)
                return bad("::::: expected at least one FILE after it");
            for (int k = start; k < i; k++)
                if (add_source(
                        o, (source_spec){.path = argv[k], .from_stdin = strcmp(argv[k], "-") == 0}))
                    return bad("out of memory");
        } else if (add_source(o, (source_spec){.items = argv + start, .n = (size_t)(i - start)})) {
            return bad("out of memory");
        }
    }
    return 0;
}

/* Checks the options that cannot go together. */
static int check_combinations(const opts *o)
{
    if (o->ungroup && (o->keep_order || o->tag || o->json || o->line_buffer))
        return bad("-u/--ungroup: cannot be combined with %s (their output goes through crew)",
                   o->keep_order ? "-k"
                   : o->tag      ? "--tag"
                   : o->json     ? "--json"
                                 : "--line-buffer");
    if (o->line_buffer && (o->keep_order || o->json))
        return bad("--line-buffer: cannot be combined with %s", o->keep_order ? "-k" : "--json");
    if (o->json && o->tag)
        return bad("--tag: cannot be combined with --json (the object has the arguments)");
    if (o->resume && !o->joblog)
        return bad("%s: needs --joblog FILE to read",
                   o->resume == RESUME_DONE ? "--resume" : "--resume-failed");
    for (size_t i = 0; i < o->nsources; i++)
        if (o->sources[i].from_stdin && i > 0)
            return bad("-a -: standard input can only be the first source");
    return 0;
}

int opts_parse(opts *o, int argc, char **argv, bool *exit_now)
{
    *o = (opts){.jobs = 0,
                .delim = '\n',
                .kill_after = 2 * CREW_SEC,
                .retry_delay = 100 * CREW_MSEC,
                .load = -1};
    *exit_now = false;
    opterr = 0;
    unsigned long v;
    int c, longidx;
    while ((longidx = -1, c = getopt_long(argc, argv, "+:j:a:0d:kuqhV", longopts, &longidx)) !=
           -1) {
        const char *name = longidx >= 0 ? argv[optind - 1] : opt_name(c, longidx);
        if (longidx >= 0) {
            static char lname[64];
            snprintf(lname, sizeof lname, "--%s", longopts[longidx].name);
            name = lname;
        }
        int rc = 0;
        switch (c) {
        case 'j':
            if (parse_jobs(optarg, &o->jobs))
                return bad("%s: expected a number of jobs (N >= 1, N%%, +N or -N), got '%s'", name,
                           optarg);
            break;
        case 'a':
            rc = add_source(o,
                            (source_spec){.path = optarg, .from_stdin = strcmp(optarg, "-") == 0});
            if (rc)
                return bad("out of memory");
            break;
        case '0':
            o->delim = '\0';
            break;
        case 'd':
            if (parse_delim(optarg, &o->delim))
                return bad("%s: expected one character (or \\n, \\t, \\0), got '%s'", name, optarg);
            break;
        case 'k':
            o->keep_order = true;
            break;
        case 'u':
            o->ungroup = true;
            break;
        case 'q':
            o->quiet = true;
            break;
        case 'h':
            fputs(usage_text, stdout);
            *exit_now = true;
            return 0;
        case 'V':
            printf("crew %s (libcrew %s)\n", CREW_VERSION_STRING, crew_version());
            *exit_now = true;
            return 0;
        case O_QUEUE:
            if (parse_uint(optarg, 1u << 30, &v) || v == 0)
                return bad("%s: expected a number of jobs from 1 to 1073741824, got '%s'", name,
                           optarg);
            o->queue = v;
            break;
        case O_DRYRUN:
            o->dry_run = true;
            break;
        case O_TIMEOUT:
            if ((rc = parse_duration(name, optarg, &o->timeout, false)))
                return rc;
            break;
        case O_KILLAFTER:
            if ((rc = parse_duration(name, optarg, &o->kill_after, true)))
                return rc;
            break;
        case O_RETRIES:
            if (parse_uint(optarg, 1000000, &v))
                return bad("%s: expected a number of retries (0 or more), got '%s'", name, optarg);
            o->retries = (unsigned)v;
            break;
        case O_RETRYDELAY:
            if ((rc = parse_duration(name, optarg, &o->retry_delay, true)))
                return rc;
            break;
        case O_RATE:
            if (parse_rate(optarg, &o->rate))
                return bad("%s: expected a rate such as 10, 10/s, 30/m or 100/h (above 0), "
                           "got '%s'",
                           name, optarg);
            break;
        case O_DELAY:
            if ((rc = parse_duration(name, optarg, &o->delay, true)))
                return rc;
            break;
        case O_HALT:
            if (parse_halt(optarg, o))
                return bad("%s: expected never, or now|soon,fail=N|fail=P%%|success=N|"
                           "success=P%%|done=N|done=P%%, got '%s'",
                           name, optarg);
            break;
        case O_JOBLOG:
            o->joblog = optarg;
            break;
        case O_RESUME:
            o->resume = RESUME_DONE;
            break;
        case O_RESUMEFAILED:
            o->resume = RESUME_FAILED;
            break;
        case O_BAR:
            o->bar = true;
            break;
        case O_ETA:
            o->eta = true;
            break;
        case O_JSON:
            o->json = true;
            break;
        case O_METRICS:
            o->metrics = optarg;
            break;
        case O_MEMFREE:
            if (parse_size(optarg, &o->memfree))
                return bad("%s: expected a size such as 500M, 2G or 1048576, got '%s'", name,
                           optarg);
            break;
        case O_LOAD: {
            char *end;
            errno = 0;
            o->load = strtod(optarg, &end);
            if (end == optarg || *end || errno || !isfinite(o->load) || o->load < 0)
                return bad("%s: expected a number of runnable tasks (0 or more), got '%s'", name,
                           optarg);
            break;
        }
        case O_LINEBUF:
            o->line_buffer = true;
            break;
        case O_TAG:
            o->tag = true;
            break;
        case ':':
            return bad("%s: expected a value after it", argv[optind - 1]);
        default:
            if (optopt && optopt < 256 && argv[optind - 1][1] != '-')
                return bad("-%c: unknown option", optopt);
            return bad("%s: unknown option", argv[optind - 1]);
        }
    }
    /* Defaults that depend on -j. A queue of -j jobs keeps every worker fed without
     * reading further ahead than needed; the -k window lets 1024 jobs finish ahead of the
     * oldest unprinted one, beyond those running and queued. */
    if (o->jobs == 0)
        o->jobs = crew_ncpu();
    if (o->queue == 0)
        o->queue = o->jobs;
    o->order_window = o->jobs + o->queue + 1024;
    int rc = parse_words(o, argc, argv, optind);
    if (rc)
        return rc;
    return check_combinations(o);
}

void opts_free(opts *o)
{
    free(o->sources);
    o->sources = NULL;
    o->nsources = 0;
}
