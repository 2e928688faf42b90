/*
 * Power-loss simulation for divert's crash tests (tests/it/powerloss.rs).
 *
 * Loaded with LD_PRELOAD into a `divert serve` process. For every file under
 * $POWERLOSS_DIR it keeps, in $POWERLOSS_SHADOW, a copy of the file as of its
 * last fsync/fdatasync: the bytes a disk is guaranteed to hold. Anything else
 * (write, pwrite, sync_file_range, sled's flush) reaches only the page cache,
 * which a power cut loses. After the process is killed the test rebuilds the
 * data directory from its state before the trial plus these shadows (a file
 * written but never synced reverts; a synced file renamed keeps its shadow;
 * an unlinked one is removed), starts the daemon on it, and checks that every
 * acknowledgement the daemon gave still holds.
 *
 * Directory fsyncs are not modelled (a rename of a synced file counts as
 * durable): the simulation is, if anything, kind to the daemon.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static const char *env(const char *name) {
    const char *v = getenv(name);
    return (v && *v) ? v : NULL;
}

/* The path of `path` relative to $POWERLOSS_DIR, or NULL if outside it. */
static const char *relative(const char *path) {
    const char *dir = env("POWERLOSS_DIR");
    if (!dir || !path) return NULL;
    size_t n = strlen(dir);
    if (strncmp(path, dir, n) != 0 || path[n] != '/') return NULL;
    return path + n + 1;
}

/* shadow path for a relative path: $POWERLOSS_SHADOW/<rel with '/' as '%'> */
static void shadow_of(const char *rel, char *out, size_t len) {
    const char *sh = env("POWERLOSS_SHADOW");
    snprintf(out, len, "%s/", sh ? sh : "/nonexistent");
    size_t at = strlen(out);
    for (const char *p = rel; *p && at + 1 < len; p++) out[at++] = (*p == '/') ? '%' : *p;
    out[at] = 0;
}

static int fd_path(int fd, char *out, size_t len) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, len - 1);
    if (n < 0) return -1;
    out[n] = 0;
    return 0;
}

/* Copy the file's current bytes into its shadow (atomically: temp, rename). */
static void snapshot(const char *path) {
    const char *rel = relative(path);
    if (!rel) return;
    char shadow[PATH_MAX], tmp[PATH_MAX + 8];
    shadow_of(rel, shadow, sizeof shadow);
    snprintf(tmp, sizeof tmp, "%s.tmp", shadow);
    pthread_mutex_lock(&lock);
    int in = open(path, O_RDONLY | O_CLOEXEC);
    int out = in < 0 ? -1 : open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (in >= 0 && out >= 0) {
        char buf[1 << 16];
        ssize_t n;
        int ok = 1;
        while ((n = read(in, buf, sizeof buf)) > 0) {
            if (write(out, buf, (size_t)n) != n) { ok = 0; break; }
        }
        close(out);
        if (ok && n == 0) rename(tmp, shadow);
        else unlink(tmp);
        char mark[PATH_MAX + 10];
        snprintf(mark, sizeof mark, "%s.unlinked", shadow);
        unlink(mark);
    } else if (out >= 0) {
        close(out);
    }
    if (in >= 0) close(in);
    pthread_mutex_unlock(&lock);
}

static void after_sync(int fd) {
    char path[PATH_MAX];
    if (fd_path(fd, path, sizeof path) == 0) snapshot(path);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "fsync");
    int r = real(fd);
    if (r == 0) after_sync(fd);
    return r;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "fdatasync");
    int r = real(fd);
    if (r == 0) after_sync(fd);
    return r;
}

static void moved(const char *from, const char *to) {
    const char *rf = relative(from), *rt = relative(to);
    if (!rf || !rt) return;
    char sf[PATH_MAX], st[PATH_MAX];
    shadow_of(rf, sf, sizeof sf);
    shadow_of(rt, st, sizeof st);
    pthread_mutex_lock(&lock);
    if (access(sf, F_OK) == 0) rename(sf, st);
    pthread_mutex_unlock(&lock);
}

static void removed(const char *path) {
    const char *rel = relative(path);
    if (!rel) return;
    char shadow[PATH_MAX], mark[PATH_MAX + 10];
    shadow_of(rel, shadow, sizeof shadow);
    snprintf(mark, sizeof mark, "%s.unlinked", shadow);
    pthread_mutex_lock(&lock);
    unlink(shadow);
    int fd = open(mark, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
    pthread_mutex_unlock(&lock);
}

/* Absolute path of `path` relative to `dirfd` (AT_FDCWD or a directory). */
static void absolute(int dirfd, const char *path, char *out, size_t len) {
    if (path[0] == '/') { snprintf(out, len, "%s", path); return; }
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) { if (!getcwd(base, sizeof base)) base[0] = 0; }
    else if (fd_path(dirfd, base, sizeof base) != 0) base[0] = 0;
    snprintf(out, len, "%s/%s", base, path);
}

int rename(const char *from, const char *to) {
    static int (*real)(const char *, const char *);
    if (!real) real = dlsym(RTLD_NEXT, "rename");
    int r = real(from, to);
    if (r == 0) {
        char a[PATH_MAX], b[PATH_MAX];
        absolute(AT_FDCWD, from, a, sizeof a);
        absolute(AT_FDCWD, to, b, sizeof b);
        moved(a, b);
    }
    return r;
}

int renameat(int fd1, const char *from, int fd2, const char *to) {
    static int (*real)(int, const char *, int, const char *);
    if (!real) real = dlsym(RTLD_NEXT, "renameat");
    int r = real(fd1, from, fd2, to);
    if (r == 0) {
        char a[PATH_MAX], b[PATH_MAX];
        absolute(fd1, from, a, sizeof a);
        absolute(fd2, to, b, sizeof b);
        moved(a, b);
    }
    return r;
}

int unlink(const char *path) {
    static int (*real)(const char *);
    if (!real) real = dlsym(RTLD_NEXT, "unlink");
    int r = real(path);
    if (r == 0) {
        char a[PATH_MAX];
        absolute(AT_FDCWD, path, a, sizeof a);
        removed(a);
    }
    return r;
}

int unlinkat(int dirfd, const char *path, int flags) {
    static int (*real)(int, const char *, int);
    if (!real) real = dlsym(RTLD_NEXT, "unlinkat");
    int r = real(dirfd, path, flags);
    if (r == 0 && !(flags & AT_REMOVEDIR)) {
        char a[PATH_MAX];
        absolute(dirfd, path, a, sizeof a);
        removed(a);
    }
    return r;
}
