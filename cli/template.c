/*
 * template.c - the command template: replacement strings, quoting, and the choice between
 * exec'ing a job directly and running it through a shell.
 *
 * The command's words are joined with spaces into one command line, as GNU parallel does
 * (so `crew gzip -c {} '>' {}.gz` redirects). Replacement strings in it: {} (the
 * arguments), {.} (without extension), {/} (basename), {//} (dirname), {/.} (basename
 * without extension), {#} (job number), {%} (slot number), and {N} {N.} {N/} {N//} {N/.}
 * for the N-th argument when there are several sources. With none of them the arguments
 * are appended. With no command at all, each argument is itself a command line.
 *
 * Direct or shell. A shell costs a fork+exec of its own per job, so the command is exec'd
 * directly whenever that gives the same result: when its literal text has no shell syntax
 * (only letters, digits, spaces and _-./:,+@%= outside the replacement strings), its first
 * word is literal, not a shell keyword or builtin, and names an executable found now in
 * PATH. The direct argv is the one a shell would build from the quoted line: an argument
 * is never split or globbed, and {} with several arguments makes several words. When in
 * doubt (a keyword, an unknown command, any special character), the shell runs it: then
 * every substituted value is single-quoted, so an input line such as `x; rm -rf ~` stays
 * one argument. The shell is $SHELL when it is a POSIX-family shell, else /bin/sh.
 *
 * Threads: a tmpl is built once by the main thread and then only read, by every worker at
 * once; each worker expands into its own `expansion` scratch, so the per-job path
 * allocates nothing once the scratch has grown.
 */
#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Replacement string kinds. */
enum { T_ARG, T_NOEXT, T_BASE, T_DIR, T_BASENOEXT, T_SEQ, T_SLOT };

/* A piece of the command line: literal text or a replacement string. */
typedef struct seg {
    bool tok;         /* a replacement string (else literal) */
    int kind;         /* T_* when tok */
    unsigned argi;    /* 1-based argument for {N...}; 0 = all arguments */
    const char *text; /* literal bytes (into tmpl.line) */
    size_t len;       /* their length */
} seg;

/* A word of the direct argv: a run of segments. */
typedef struct word {
    size_t first; /* index of its first segment in tmpl.wsegs */
    size_t n;     /* how many segments */
} word;

struct tmpl {
    char *line;      /* the joined command line */
    seg *segs;       /* the line as segments (shell mode) */
    size_t nsegs;    /* how many */
    seg *wsegs;      /* the segments split into words (direct mode) */
    size_t nwsegs;   /* how many */
    word *words;     /* direct mode's words */
    size_t nwords;   /* how many */
    bool has_tokens; /* any replacement string; else arguments are appended */
    bool raw;        /* no command: each argument is run as a command line */
    bool shell;      /* run through the shell */
    char *exe;       /* what to exec: the resolved command, or the shell */
};

/* ---- strbuf ---------------------------------------------------------------------------- */

static int sb_grow(strbuf *b, size_t n)
{
    if (b->len + n + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int sb_put(strbuf *b, const void *p, size_t n)
{
    if (sb_grow(b, n))
        return -ENOMEM;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int sb_putc(strbuf *b, char c)
{
    return sb_put(b, &c, 1);
}

int sb_puts(strbuf *b, const char *s)
{
    return sb_put(b, s, strlen(s));
}

int sb_printf(strbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || sb_grow(b, (size_t)n))
        return -ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void sb_free(strbuf *b)
{
    free(b->p);
    *b = (strbuf){0};
}

/* ---- quoting --------------------------------------------------------------------------- */

/* Characters that mean nothing to a POSIX shell anywhere in a word. */
static bool plain_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("_-./:,+@%", c) != NULL;
}

int shell_quote(strbuf *b, const char *s)
{
    bool plain = *s != '\0';
    for (const char *p = s; *p && plain; p++)
        plain = plain_char((unsigned char)*p);
    if (plain)
        return sb_puts(b, s);
    if (sb_putc(b, '\''))
        return -ENOMEM;
    for (const char *p = s; *p; p++) {
        int rc = *p == '\'' ? sb_puts(b, "'\\''") : sb_putc(b, *p);
        if (rc)
            return rc;
    }
    return sb_putc(b, '\'');
}

/* ---- parsing --------------------------------------------------------------------------- */

/* Recognises a replacement string at s ("{...}"): its length, or 0 if it is not one. A
 * brace that starts none of them stays literal text (and, being special to some shells,
 * sends the job through the shell). */
static size_t parse_token(const char *s, int *kind, unsigned *argi)
{
    static const struct {
        const char *suffix;
        int kind;
    } forms[] = {
        {"}", T_ARG}, {".}", T_NOEXT}, {"/}", T_BASE}, {"//}", T_DIR}, {"/.}", T_BASENOEXT},
    };
    const char *p = s + 1;
    *argi = 0;
    if (p[0] == '#' && p[1] == '}') {
        *kind = T_SEQ;
        return 3;
    }
    if (p[0] == '%' && p[1] == '}') {
        *kind = T_SLOT;
        return 3;
    }
    if (*p >= '1' && *p <= '9') {
        unsigned long n = 0;
        while (*p >= '0' && *p <= '9' && n < 100000)
            n = n * 10 + (unsigned long)(*p++ - '0');
        if (n >= 100000)
            return 0;
        *argi = (unsigned)n;
    }
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        size_t n = strlen(forms[i].suffix);
        if (strncmp(p, forms[i].suffix, n) == 0) {
            *kind = forms[i].kind;
            return (size_t)(p - s) + n;
        }
    }
    return 0;
}

static int add_seg(seg **v, size_t *n, seg s)
{
    seg *p = realloc(*v, (*n + 1) * sizeof *p);
    if (!p)
        return -ENOMEM;
    p[(*n)++] = s;
    *v = p;
    return 0;
}

/* Shell words that are not programs, or whose program would behave differently. */
static bool shell_word(const char *w, size_t n)
{
    static const char *const words[] = {
        "!",      "{",     "}",       "[[",       "]]",      "case",     "do",      "done",
        "elif",   "else",  "esac",    "fi",       "for",     "function", "if",      "in",
        "select", "then",  "time",    "until",    "while",   ".",        ":",       "alias",
        "bg",     "break", "builtin", "cd",       "command", "continue", "declare", "eval",
        "exec",   "exit",  "export",  "fc",       "fg",      "getopts",  "hash",    "jobs",
        "let",    "local", "read",    "readonly", "return",  "set",      "shift",   "source",
        "times",  "trap",  "type",    "typeset",  "ulimit",  "umask",    "unalias", "unset",
        "wait",
    };
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strlen(words[i]) == n && memcmp(words[i], w, n) == 0)
            return true;
    return false;
}

static bool executable(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

/* The path execvp would run for name, or NULL. Resolved once, when crew starts, so the
 * per-job path is posix_spawn on a fixed path with no PATH search; a command that appears
 * in PATH later is not seen (a shell would see it), which is why "not found" goes to the
 * shell. */
static char *resolve(const char *name)
{
    if (strchr(name, '/'))
        return executable(name) ? strdup(name) : NULL;
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/local/bin:/usr/bin:/bin";
    strbuf b = {0};
    for (const char *p = path;; p++) {
        const char *end = strchrnul(p, ':');
        b.len = 0;
        if (end == p ? sb_putc(&b, '.') : sb_put(&b, p, (size_t)(end - p)))
            break;
        if (sb_putc(&b, '/') || sb_puts(&b, name))
            break;
        if (executable(b.p))
            return b.p;
        if (!*end)
            break;
        p = end;
    }
    sb_free(&b);
    return NULL;
}

/* The shell for jobs that need one: $SHELL if it speaks POSIX sh quoting, else /bin/sh. */
static char *pick_shell(void)
{
    static const char *const posix[] = {"sh",  "bash", "dash", "zsh",   "ksh",    "mksh",
                                        "ash", "yash", "posh", "ksh93", "busybox"};
    const char *s = getenv("SHELL");
    if (s && s[0] == '/') {
        const char *base = strrchr(s, '/') + 1;
        for (size_t i = 0; i < sizeof posix / sizeof posix[0]; i++)
            if (strcmp(base, posix[i]) == 0 && executable(s))
                return strdup(s);
    }
    return strdup("/bin/sh");
}

/* Splits the segments into words at spaces and tabs, for direct exec. A word may mix
 * literal text and replacement strings ("x{}.gz"); tokens never split a word, only the
 * spaces of the literal text do. */
static int split_words(tmpl *t)
{
    bool in_word = false;
    for (size_t i = 0; i < t->nsegs; i++) {
        seg s = t->segs[i];
        if (s.tok) {
            if (!in_word) {
                word *w = realloc(t->words, (t->nwords + 1) * sizeof *w);
                if (!w)
                    return -ENOMEM;
                t->words = w;
                t->words[t->nwords++] = (word){.first = t->nwsegs, .n = 0};
                in_word = true;
            }
            if (add_seg(&t->wsegs, &t->nwsegs, s))
                return -ENOMEM;
            t->words[t->nwords - 1].n++;
            continue;
        }
        const char *p = s.text, *end = s.text + s.len;
        while (p < end) {
            if (*p == ' ' || *p == '\t') {
                in_word = false;
                p++;
                continue;
            }
            const char *q = p;
            while (q < end && *q != ' ' && *q != '\t')
                q++;
            if (!in_word) {
                word *w = realloc(t->words, (t->nwords + 1) * sizeof *w);
                if (!w)
                    return -ENOMEM;
                t->words = w;
                t->words[t->nwords++] = (word){.first = t->nwsegs, .n = 0};
                in_word = true;
            }
            if (add_seg(&t->wsegs, &t->nwsegs,
                        (seg){.tok = false, .text = p, .len = (size_t)(q - p)}))
                return -ENOMEM;
            t->words[t->nwords - 1].n++;
            p = q;
        }
    }
    return 0;
}

/* Can the job run without a shell? Sets t->exe when it can. The test is on the template,
 * once: substituted values never matter, since in direct mode they become whole words (or
 * parts of one) exactly as their single-quoted form would in the shell. '=' is plain in
 * arguments but an assignment in the first word, so that word is checked apart. */
static int decide_direct(tmpl *t)
{
    for (size_t i = 0; i < t->nsegs; i++) {
        if (t->segs[i].tok)
            continue;
        for (size_t k = 0; k < t->segs[i].len; k++) {
            unsigned char c = (unsigned char)t->segs[i].text[k];
            if (!plain_char(c) && c != ' ' && c != '\t' && c != '=')
                return 0;
        }
    }
    int rc = split_words(t);
    if (rc || t->nwords == 0)
        return rc;
    const word *w0 = &t->words[0];
    if (w0->n != 1 || t->wsegs[w0->first].tok)
        return 0; /* the program itself is substituted: let the shell decide */
    const seg *s0 = &t->wsegs[w0->first];
    if (memchr(s0->text, '=', s0->len) || shell_word(s0->text, s0->len))
        return 0; /* an assignment, a keyword or a builtin */
    char *name = strndup(s0->text, s0->len);
    if (!name)
        return -ENOMEM;
    t->exe = resolve(name);
    free(name);
    if (t->exe)
        t->shell = false;
    return 0;
}

int tmpl_parse(tmpl **out, char **words, size_t n)
{
    tmpl *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->shell = true;
    t->raw = n == 0;
    strbuf line = {0};
    for (size_t i = 0; i < n; i++)
        if ((i && sb_putc(&line, ' ')) || sb_puts(&line, words[i]))
            goto err_nomem;
    t->line = line.p ? line.p : strdup("");
    if (!t->line)
        goto err_nomem;
    /* Segments: literal runs between replacement strings. */
    const char *lit = t->line;
    for (const char *p = t->line; *p; p++) {
        int kind;
        unsigned argi;
        size_t len = *p == '{' ? parse_token(p, &kind, &argi) : 0;
        if (!len)
            continue;
        if (p > lit && add_seg(&t->segs, &t->nsegs,
                               (seg){.tok = false, .text = lit, .len = (size_t)(p - lit)}))
            goto err_nomem;
        if (add_seg(&t->segs, &t->nsegs, (seg){.tok = true, .kind = kind, .argi = argi}))
            goto err_nomem;
        t->has_tokens = true;
        p += len - 1;
        lit = p + 1;
    }
    size_t rest = strlen(lit);
    if (rest && add_seg(&t->segs, &t->nsegs, (seg){.tok = false, .text = lit, .len = rest}))
        goto err_nomem;
    if (!t->raw && decide_direct(t))
        goto err_nomem;
    if (t->shell && !(t->exe = pick_shell()))
        goto err_nomem;
    *out = t;
    return 0;
err_nomem:
    tmpl_free(t);
    return -ENOMEM;
}

void tmpl_free(tmpl *t)
{
    if (!t)
        return;
    free(t->line);
    free(t->segs);
    free(t->wsegs);
    free(t->words);
    free(t->exe);
    free(t);
}

bool tmpl_uses_shell(const tmpl *t)
{
    return t->shell;
}

const char *tmpl_exe(const tmpl *t)
{
    return t->exe;
}

/* ---- expansion ------------------------------------------------------------------------- */

/* Appends the replacement kind of value s (as GNU parallel defines each). */
static int put_transformed(strbuf *b, int kind, const char *s)
{
    const char *slash = strrchr(s, '/');
    const char *base = slash ? slash + 1 : s;
    const char *end = s + strlen(s);
    switch (kind) {
    case T_BASE:
        return sb_puts(b, base);
    case T_DIR:
        if (!slash)
            return sb_putc(b, '.');
        return sb_put(b, s, (size_t)(slash - s));
    case T_NOEXT:
    case T_BASENOEXT: {
        const char *from = kind == T_NOEXT ? s : base;
        const char *dot = strrchr(base, '.');
        return sb_put(b, from, (size_t)((dot ? dot : end) - from));
    }
    default:
        return sb_puts(b, s);
    }
}

/* Appends a number ({#} or {%}). */
static int put_number(strbuf *b, uint64_t v)
{
    return sb_printf(b, "%llu", (unsigned long long)v);
}

/* Shell mode: one replacement string, each value quoted. The transformed value (not the
 * argument) is what gets quoted, so {.} of "a b.c" is 'a b', one word. An argument index
 * past the job's arguments gives '' (an empty word, as GNU parallel's {3} with two). */
static int put_shell_token(strbuf *b, strbuf *tmp, const seg *s, const job *j, unsigned slotno)
{
    if (s->kind == T_SEQ)
        return put_number(b, j->seq);
    if (s->kind == T_SLOT)
        return put_number(b, slotno);
    unsigned lo = s->argi ? s->argi - 1 : 0, hi = s->argi ? s->argi : j->nargs;
    if (s->argi > j->nargs)
        return sb_puts(b, "''");
    for (unsigned k = lo; k < hi; k++) {
        tmp->len = 0;
        if ((k > lo && sb_putc(b, ' ')) || put_transformed(tmp, s->kind, j->args[k]) ||
            sb_putc(tmp, '\0') || shell_quote(b, tmp->p))
            return -ENOMEM;
    }
    return 0;
}

/* Builds the shell command line for j into b. */
static int build_shell_line(const tmpl *t, const job *j, unsigned slotno, strbuf *b)
{
    strbuf tmp = {0};
    int rc = 0;
    if (t->raw) {
        for (unsigned k = 0; k < j->nargs && !rc; k++)
            rc = (k && sb_putc(b, ' ')) || sb_puts(b, j->args[k]);
        goto out;
    }
    for (size_t i = 0; i < t->nsegs && !rc; i++) {
        const seg *s = &t->segs[i];
        rc = s->tok ? put_shell_token(b, &tmp, s, j, slotno) : sb_put(b, s->text, s->len);
    }
    if (!t->has_tokens)
        for (unsigned k = 0; k < j->nargs && !rc; k++)
            rc = sb_putc(b, ' ') || shell_quote(b, j->args[k]);
out:
    sb_free(&tmp);
    return rc ? -ENOMEM : 0;
}

/* Direct mode: starts a word at the current end of text, with room for the NULL after. */
static int start_word(expansion *x)
{
    if (x->nwords + 2 > x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 16;
        size_t *offs = realloc(x->offs, cap * sizeof *offs);
        if (!offs)
            return -ENOMEM;
        x->offs = offs;
        char **argv = realloc(x->argv, cap * sizeof *argv);
        if (!argv)
            return -ENOMEM;
        x->argv = argv;
        x->cap = cap;
    }
    x->offs[x->nwords++] = x->text.len;
    return 0;
}

/* Direct mode: ends the current word (words are NUL-separated in text). */
static int end_word(expansion *x)
{
    return sb_putc(&x->text, '\0');
}

/* Builds the direct argv for j: the words' bytes go NUL-separated into one buffer, their
 * offsets into offs, and argv is pointed at them only at the end, since the buffer may move
 * while it grows. */
static int build_argv(const tmpl *t, const job *j, unsigned slotno, expansion *x)
{
    x->text.len = 0;
    x->nwords = 0;
    for (size_t w = 0; w < t->nwords; w++) {
        if (start_word(x))
            return -ENOMEM;
        const word *wd = &t->words[w];
        for (size_t i = wd->first; i < wd->first + wd->n; i++) {
            const seg *s = &t->wsegs[i];
            int rc = 0;
            if (!s->tok) {
                rc = sb_put(&x->text, s->text, s->len);
            } else if (s->kind == T_SEQ) {
                rc = put_number(&x->text, j->seq);
            } else if (s->kind == T_SLOT) {
                rc = put_number(&x->text, slotno);
            } else if (s->argi) {
                if (s->argi <= j->nargs)
                    rc = put_transformed(&x->text, s->kind, j->args[s->argi - 1]);
            } else {
                /* {} with several arguments: one word each, as the quoted shell line. */
                for (unsigned k = 0; k < j->nargs && !rc; k++) {
                    if (k)
                        rc = end_word(x) || start_word(x);
                    rc = rc || put_transformed(&x->text, s->kind, j->args[k]);
                }
            }
            if (rc)
                return -ENOMEM;
        }
        if (end_word(x))
            return -ENOMEM;
    }
    if (!t->has_tokens)
        for (unsigned k = 0; k < j->nargs; k++)
            if (start_word(x) || sb_puts(&x->text, j->args[k]) || end_word(x))
                return -ENOMEM;
    for (size_t i = 0; i < x->nwords; i++)
        x->argv[i] = x->text.p + x->offs[i];
    x->argv[x->nwords] = NULL;
    return 0;
}

int tmpl_expand(const tmpl *t, const job *j, unsigned slotno, expansion *x)
{
    static char dash_c[] = "-c";
    if (!t->shell)
        return build_argv(t, j, slotno, x);
    x->text.len = 0;
    if (sb_putc(&x->text, '\0'))
        return -ENOMEM;
    x->text.len = 0;
    if (build_shell_line(t, j, slotno, &x->text))
        return -ENOMEM;
    if (x->cap < 4) {
        char **argv = realloc(x->argv, 4 * sizeof *argv);
        size_t *offs = realloc(x->offs, 4 * sizeof *offs);
        if (argv)
            x->argv = argv;
        if (offs)
            x->offs = offs;
        if (!argv || !offs)
            return -ENOMEM;
        x->cap = 4;
    }
    x->argv[0] = t->exe;
    x->argv[1] = dash_c;
    x->argv[2] = x->text.p;
    x->argv[3] = NULL;
    x->nwords = 3;
    return 0;
}

int tmpl_display(const tmpl *t, const job *j, unsigned slotno, expansion *x)
{
    x->display.len = 0;
    if (sb_putc(&x->display, '\0'))
        return -ENOMEM;
    x->display.len = 0;
    if (t->shell)
        return build_shell_line(t, j, slotno, &x->display);
    int rc = tmpl_expand(t, j, slotno, x);
    for (size_t i = 0; i < x->nwords && !rc; i++)
        rc = (i && sb_putc(&x->display, ' ')) || shell_quote(&x->display, x->argv[i]);
    return rc ? -ENOMEM : 0;
}

void expansion_free(expansion *x)
{
    sb_free(&x->text);
    sb_free(&x->display);
    free(x->offs);
    free(x->argv);
    *x = (expansion){0};
}
