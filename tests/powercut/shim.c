/*
 * Power-cut recorder: an LD_PRELOAD library for the power-loss test
 * (tests/e2e/powercut.rs). For every file operation under the directory named by
 * PAYD_POWERCUT_DIR it appends a record to the log named by PAYD_POWERCUT_LOG:
 * data operations (write, pwrite, writev, pwritev, ftruncate, fallocate, O_TRUNC),
 * directory-entry operations (create, rename, link, unlink, mkdir, rmdir) and
 * barriers (fsync, fdatasync, sync_file_range, syncfs, sync). The test rebuilds
 * the directory as a power cut would leave it: only what a completed sync covered.
 *
 * Protocol: an operation is logged as an intent record *before* it runs and a DONE
 * record (its result) after, both under one mutex that is held across the
 * operation, so at a SIGKILL at most one intent lacks its DONE. A sync logs
 * SYNC_BEGIN under the mutex and its DONE after the (unlocked) sync returns: it
 * covers exactly the operations logged before its SYNC_BEGIN.
 *
 * Only libc entry points can be hooked; a crate issuing raw syscalls would escape
 * the recorder. The test detects that: replaying every logged operation on the
 * starting snapshot must reproduce the directory payd left behind, byte for byte.
 *
 * Test fixture only (C, compiled by the test with the machine's cc): payd itself
 * forbids unsafe code.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum kind {
    K_WRITE = 1,
    K_DONE = 2,
    K_TRUNCATE = 3,
    K_CREATE = 4,
    K_RENAME = 5,
    K_UNLINK = 6,
    K_MKDIR = 7,
    K_LINK = 8,
    K_SYNC = 9,
    K_RMDIR = 10,
    K_FALLOCATE = 11,
    K_SYNCALL = 12,
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char prefix[PATH_MAX];
static size_t prefix_len;
static int log_fd = -1;
static uint64_t seq;
static int initialized;

#define REAL(ret, name, args) \
    static ret(*real_##name) args;

REAL(int, open, (const char *, int, ...))
REAL(int, open64, (const char *, int, ...))
REAL(int, openat, (int, const char *, int, ...))
REAL(int, openat64, (int, const char *, int, ...))
REAL(int, creat, (const char *, mode_t))
REAL(int, creat64, (const char *, mode_t))
REAL(ssize_t, write, (int, const void *, size_t))
REAL(ssize_t, pwrite, (int, const void *, size_t, off_t))
REAL(ssize_t, pwrite64, (int, const void *, size_t, off_t))
REAL(ssize_t, writev, (int, const struct iovec *, int))
REAL(ssize_t, pwritev, (int, const struct iovec *, int, off_t))
REAL(ssize_t, pwritev64, (int, const struct iovec *, int, off_t))
REAL(ssize_t, pwritev2, (int, const struct iovec *, int, off_t, int))
REAL(int, ftruncate, (int, off_t))
REAL(int, ftruncate64, (int, off_t))
REAL(int, truncate, (const char *, off_t))
REAL(int, truncate64, (const char *, off_t))
REAL(int, fallocate, (int, int, off_t, off_t))
REAL(int, fallocate64, (int, int, off_t, off_t))
REAL(int, posix_fallocate, (int, off_t, off_t))
REAL(int, posix_fallocate64, (int, off_t, off_t))
REAL(int, rename, (const char *, const char *))
REAL(int, renameat, (int, const char *, int, const char *))
REAL(int, renameat2, (int, const char *, int, const char *, unsigned int))
REAL(int, link, (const char *, const char *))
REAL(int, linkat, (int, const char *, int, const char *, int))
REAL(int, unlink, (const char *))
REAL(int, unlinkat, (int, const char *, int))
REAL(int, mkdir, (const char *, mode_t))
REAL(int, mkdirat, (int, const char *, mode_t))
REAL(int, rmdir, (const char *))
REAL(int, fsync, (int))
REAL(int, fdatasync, (int))
REAL(int, sync_file_range, (int, off_t, off_t, unsigned int))
REAL(int, syncfs, (int))
REAL(void, sync, (void))

#define LOAD(name) real_##name = dlsym(RTLD_NEXT, #name)

static void init(void) {
    if (initialized) return;
    LOAD(open); LOAD(open64); LOAD(openat); LOAD(openat64); LOAD(creat); LOAD(creat64);
    LOAD(write); LOAD(pwrite); LOAD(pwrite64); LOAD(writev); LOAD(pwritev);
    LOAD(pwritev64); LOAD(pwritev2); LOAD(ftruncate); LOAD(ftruncate64);
    LOAD(truncate); LOAD(truncate64); LOAD(fallocate); LOAD(fallocate64);
    LOAD(posix_fallocate); LOAD(posix_fallocate64); LOAD(rename); LOAD(renameat);
    LOAD(renameat2); LOAD(link); LOAD(linkat); LOAD(unlink); LOAD(unlinkat);
    LOAD(mkdir); LOAD(mkdirat); LOAD(rmdir); LOAD(fsync); LOAD(fdatasync);
    LOAD(sync_file_range); LOAD(syncfs); LOAD(sync);
    const char *dir = getenv("PAYD_POWERCUT_DIR");
    const char *logp = getenv("PAYD_POWERCUT_LOG");
    if (dir && logp && strlen(dir) + 2 < sizeof prefix) {
        strcpy(prefix, dir);
        prefix_len = strlen(prefix);
        while (prefix_len > 1 && prefix[prefix_len - 1] == '/') prefix[--prefix_len] = 0;
        log_fd = real_open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (log_fd < 0) {
            fprintf(stderr, "powercut shim: cannot open log %s\n", logp);
            abort();
        }
    }
    initialized = 1;
}

__attribute__((constructor)) static void ctor(void) { init(); }

static int under(const char *abs) {
    return log_fd >= 0 && strncmp(abs, prefix, prefix_len) == 0 &&
           (abs[prefix_len] == '/' || abs[prefix_len] == 0);
}

/* Absolute path of `path` relative to dirfd (AT_FDCWD for the cwd). No
 * normalisation of `..`: payd's storage paths never contain it. */
static int abs_path(int dirfd, const char *path, char *out) {
    if (!path) return -1;
    if (path[0] == '/') {
        if (strlen(path) >= PATH_MAX) return -1;
        strcpy(out, path);
        return 0;
    }
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return -1;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof base - 1);
        if (n < 0) return -1;
        base[n] = 0;
    }
    if (strlen(base) + strlen(path) + 2 >= PATH_MAX) return -1;
    memcpy(out, base, strlen(base));
    out[strlen(base)] = '/';
    strcpy(out + strlen(base) + 1, path);
    /* Strip "./" components so paths compare as the test expects. */
    char *p;
    while ((p = strstr(out, "/./")) != NULL) memmove(p, p + 2, strlen(p + 2) + 1);
    return 0;
}

static int fd_path(int fd, char *out) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, PATH_MAX - 1);
    if (n < 0) return -1;
    out[n] = 0;
    return 0;
}

/* Writes one record: u32 length of the rest, u8 kind, u64 seq, i64 wall-clock
 * nanoseconds (CLOCK_REALTIME, comparable with the test's SystemTime), i64 a, b, c, then
 * three length-prefixed byte strings (path, path2, data). Caller holds `mu`. */
static uint64_t emit(int kind, int64_t a, int64_t b, int64_t c, const char *p1,
                     const char *p2, const struct iovec *iov, int iovcnt, size_t data_len) {
    uint32_t l1 = p1 ? strlen(p1) : 0, l2 = p2 ? strlen(p2) : 0;
    uint32_t ld = (uint32_t)data_len;
    uint32_t total = 1 + 8 + 8 + 24 + 4 + l1 + 4 + l2 + 4 + ld;
    size_t cap = 4 + (size_t)total;
    unsigned char *buf = malloc(cap);
    if (!buf) abort();
    unsigned char *w = buf;
    uint64_t s = ++seq;
    uint8_t k = (uint8_t)kind;
    memcpy(w, &total, 4); w += 4;
    memcpy(w, &k, 1); w += 1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t t_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    memcpy(w, &s, 8); w += 8;
    memcpy(w, &t_ns, 8); w += 8;
    memcpy(w, &a, 8); w += 8;
    memcpy(w, &b, 8); w += 8;
    memcpy(w, &c, 8); w += 8;
    memcpy(w, &l1, 4); w += 4; if (l1) { memcpy(w, p1, l1); w += l1; }
    memcpy(w, &l2, 4); w += 4; if (l2) { memcpy(w, p2, l2); w += l2; }
    memcpy(w, &ld, 4); w += 4;
    size_t left = data_len;
    for (int i = 0; i < iovcnt && left > 0; i++) {
        size_t n = iov[i].iov_len < left ? iov[i].iov_len : left;
        memcpy(w, iov[i].iov_base, n);
        w += n;
        left -= n;
    }
    size_t off = 0;
    while (off < cap) {
        ssize_t n = real_write(log_fd, buf + off, cap - off);
        if (n < 0) {
            if (errno == EINTR) continue;
            abort();
        }
        off += (size_t)n;
    }
    free(buf);
    return s;
}

static void done(uint64_t intent, int64_t result, int64_t extra) {
    emit(K_DONE, (int64_t)intent, result, extra, NULL, NULL, NULL, 0, 0);
}

static int64_t ino_of_fd(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    return (int64_t)st.st_ino;
}

/* ---- opens ---- */

static int do_open(int dirfd, const char *path, int flags, mode_t mode, int which) {
    init();
    char abs[PATH_MAX];
    int traced = log_fd >= 0 && abs_path(dirfd, path, abs) == 0 && under(abs);
    int fd;
#define CALL_OPEN()                                                               \
    (which == 0   ? real_open(path, flags, mode)                                  \
     : which == 1 ? real_open64(path, flags, mode)                                \
     : which == 2 ? real_openat(dirfd, path, flags, mode)                         \
                  : real_openat64(dirfd, path, flags, mode))
    if (!traced || !(flags & (O_CREAT | O_TRUNC))) return CALL_OPEN();
    pthread_mutex_lock(&mu);
    struct stat st;
    int existed = stat(abs, &st) == 0;
    uint64_t intent = 0;
    int writable = (flags & O_ACCMODE) != O_RDONLY;
    if (!existed && (flags & O_CREAT)) {
        intent = emit(K_CREATE, 0, 0, 0, abs, NULL, NULL, 0, 0);
    } else if (existed && (flags & O_TRUNC) && writable && S_ISREG(st.st_mode)) {
        intent = emit(K_TRUNCATE, (int64_t)st.st_ino, 0, 0, abs, NULL, NULL, 0, 0);
    }
    fd = CALL_OPEN();
    int saved = errno;
    if (intent) done(intent, fd < 0 ? -1 : 0, fd < 0 ? -1 : ino_of_fd(fd));
    pthread_mutex_unlock(&mu);
    errno = saved;
    return fd;
#undef CALL_OPEN
}

static mode_t va_mode(int flags, va_list ap) {
    return (flags & (O_CREAT | __O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = va_mode(flags, ap); va_end(ap);
    return do_open(AT_FDCWD, path, flags, m, 0);
}
int open64(const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = va_mode(flags, ap); va_end(ap);
    return do_open(AT_FDCWD, path, flags, m, 1);
}
int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = va_mode(flags, ap); va_end(ap);
    return do_open(dirfd, path, flags, m, 2);
}
int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = va_mode(flags, ap); va_end(ap);
    return do_open(dirfd, path, flags, m, 3);
}
int creat(const char *path, mode_t mode) {
    return do_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, 0);
}
int creat64(const char *path, mode_t mode) {
    return do_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, 1);
}

/* ---- data ---- */

/* Returns 1 and fills abs/ino if fd is a regular file under the traced dir. */
static int traced_fd(int fd, char *abs, int64_t *ino) {
    init();
    if (log_fd < 0 || fd == log_fd) return 0;
    if (fd_path(fd, abs) != 0 || !under(abs)) return 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    *ino = (int64_t)st.st_ino;
    return 1;
}

/* off < 0: the write goes to the file position (or the end, with O_APPEND). */
static ssize_t do_write(int fd, const struct iovec *iov, int iovcnt, off_t off, int which,
                        int flags2) {
    char abs[PATH_MAX];
    int64_t ino;
#define CALL_WRITE()                                                                  \
    (which == 0   ? real_write(fd, iov[0].iov_base, iov[0].iov_len)                   \
     : which == 1 ? real_pwrite(fd, iov[0].iov_base, iov[0].iov_len, off)             \
     : which == 2 ? real_pwrite64(fd, iov[0].iov_base, iov[0].iov_len, off)           \
     : which == 3 ? real_writev(fd, iov, iovcnt)                                      \
     : which == 4 ? real_pwritev(fd, iov, iovcnt, off)                                \
     : which == 5 ? real_pwritev64(fd, iov, iovcnt, off)                              \
                  : real_pwritev2(fd, iov, iovcnt, off, flags2))
    if (!traced_fd(fd, abs, &ino)) return CALL_WRITE();
    size_t len = 0;
    for (int i = 0; i < iovcnt; i++) len += iov[i].iov_len;
    pthread_mutex_lock(&mu);
    off_t at = off;
    if (at < 0) {
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0 && (fl & O_APPEND)) {
            struct stat st;
            fstat(fd, &st);
            at = st.st_size;
        } else {
            at = lseek(fd, 0, SEEK_CUR);
        }
    }
    uint64_t intent = emit(K_WRITE, ino, (int64_t)at, 0, abs, NULL, iov, iovcnt, len);
    ssize_t r = CALL_WRITE();
    int saved = errno;
    done(intent, r, 0);
    pthread_mutex_unlock(&mu);
    errno = saved;
    return r;
#undef CALL_WRITE
}

ssize_t write(int fd, const void *buf, size_t n) {
    struct iovec v = {(void *)buf, n};
    init();
    return do_write(fd, &v, 1, -1, 0, 0);
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    struct iovec v = {(void *)buf, n};
    return do_write(fd, &v, 1, off, 1, 0);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    struct iovec v = {(void *)buf, n};
    return do_write(fd, &v, 1, off, 2, 0);
}
ssize_t writev(int fd, const struct iovec *iov, int n) { return do_write(fd, iov, n, -1, 3, 0); }
ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off) {
    return do_write(fd, iov, n, off, 4, 0);
}
ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t off) {
    return do_write(fd, iov, n, off, 5, 0);
}
ssize_t pwritev2(int fd, const struct iovec *iov, int n, off_t off, int flags) {
    return do_write(fd, iov, n, off, 6, flags);
}

static int do_ftruncate(int fd, off_t len, int which) {
    char abs[PATH_MAX];
    int64_t ino;
    if (!traced_fd(fd, abs, &ino))
        return which ? real_ftruncate64(fd, len) : real_ftruncate(fd, len);
    pthread_mutex_lock(&mu);
    uint64_t intent = emit(K_TRUNCATE, ino, (int64_t)len, 0, abs, NULL, NULL, 0, 0);
    int r = which ? real_ftruncate64(fd, len) : real_ftruncate(fd, len);
    int saved = errno;
    done(intent, r, 0);
    pthread_mutex_unlock(&mu);
    errno = saved;
    return r;
}
int ftruncate(int fd, off_t len) { init(); return do_ftruncate(fd, len, 0); }
int ftruncate64(int fd, off_t len) { init(); return do_ftruncate(fd, len, 1); }

static int do_truncate(const char *path, off_t len, int which) {
    init();
    char abs[PATH_MAX];
    struct stat st;
    if (log_fd < 0 || abs_path(AT_FDCWD, path, abs) != 0 || !under(abs) || stat(abs, &st) != 0)
        return which ? real_truncate64(path, len) : real_truncate(path, len);
    pthread_mutex_lock(&mu);
    uint64_t intent = emit(K_TRUNCATE, (int64_t)st.st_ino, (int64_t)len, 0, abs, NULL, NULL, 0, 0);
    int r = which ? real_truncate64(path, len) : real_truncate(path, len);
    int saved = errno;
    done(intent, r, 0);
    pthread_mutex_unlock(&mu);
    errno = saved;
    return r;
}
int truncate(const char *p, off_t len) { return do_truncate(p, len, 0); }
int truncate64(const char *p, off_t len) { return do_truncate(p, len, 1); }

/* mode: the fallocate mode; posix_fallocate is mode 0. */
static int do_fallocate(int fd, int mode, off_t off, off_t len, int which) {
    char abs[PATH_MAX];
    int64_t ino;
    init();
#define CALL_FALLOC()                                                    \
    (which == 0   ? real_fallocate(fd, mode, off, len)                   \
     : which == 1 ? real_fallocate64(fd, mode, off, len)                 \
     : which == 2 ? real_posix_fallocate(fd, off, len)                   \
                  : real_posix_fallocate64(fd, off, len))
    if (!traced_fd(fd, abs, &ino)) return CALL_FALLOC();
    pthread_mutex_lock(&mu);
    uint64_t intent = emit(K_FALLOCATE, ino, (int64_t)off, (int64_t)len, abs, NULL, NULL, 0,
                           0);
    /* The mode travels in the DONE record's extra field. */
    int r = CALL_FALLOC();
    int saved = errno;
    done(intent, r, mode);
    pthread_mutex_unlock(&mu);
    errno = saved;
    return r;
#undef CALL_FALLOC
}
int fallocate(int fd, int mode, off_t off, off_t len) { return do_fallocate(fd, mode, off, len, 0); }
int fallocate64(int fd, int mode, off_t off, off_t len) { return do_fallocate(fd, mode, off, len, 1); }
int posix_fallocate(int fd, off_t off, off_t len) { return do_fallocate(fd, 0, off, len, 2); }
int posix_fallocate64(int fd, off_t off, off_t len) { return do_fallocate(fd, 0, off, len, 3); }

/* ---- directory entries ---- */

static int do_rename(int olddirfd, const char *oldp, int newdirfd, const char *newp,
                     unsigned int flags, int which) {
    init();
    char a[PATH_MAX], b[PATH_MAX];
#define CALL_RENAME()                                                        \
    (which == 0   ? real_rename(oldp, newp)                                  \
     : which == 1 ? real_renameat(olddirfd, oldp, newdirfd, newp)            \
                  : real_renameat2(olddirfd, oldp, newdirfd, newp, flags))
    if (log_fd < 0 || abs_path(olddirfd, oldp, a) != 0 || abs_path(newdirfd, newp, b) != 0 ||
        !(under(a) || under(b)))
        return CALL_RENAME();
    pthread_mutex_lock(&mu);
    uint64_t intent = emit(K_RENAME, 0, 0, 0, a, b, NULL, 0, 0);
    int r = CALL_RENAME();
    int saved = errno;
    done(intent, r, 0);
    pthread_mutex_unlock(&mu);
    errno = saved;
    return r;
#undef CALL_RENAME
}
int rename(const char *o, const char *n) { return do_rename(AT_FDCWD, o, AT_FDCWD, n, 0, 0); }
int renameat(int od, const char *o, int nd, const char *n) { return do_rename(od, o, nd, n, 0, 1); }
int renameat2(int od, const char *o, int nd, const char *n, unsigned int f) {
    return do_rename(od, o, nd, n, f, 2);
}

static int do_link(int olddirfd, const char *oldp, int newdirfd, const char *newp, int flags,
                   int which) {
    init();
    char a[PATH_MAX], b[PATH_MAX];
    if (log_fd < 0 || abs_path(olddirfd, oldp, a) != 0 || abs_path(newdirfd, newp, b) != 0 ||
        !under(b))
        return which ? real_linkat(olddirfd, oldp, newdirfd, newp, flags) : real_link(oldp, newp);
    pthread_mutex_lock(&mu);
    uint64_t intent = emit(K_LINK, 0, 0, 0, a, b, NULL, 0, 0);
    int r = which ? real_linkat(olddirfd, oldp, newdirfd, newp, flags) : real_link(oldp, newp);
    int saved = errno;
    done(intent, r, 0);
    pthread_mutex_unlock(&mu);
    errno = saved;
    return r;
}
int link(const char *o, const char *n) { return do_link(AT_FDCWD, o, AT_FDCWD, n, 0, 0); }
int linkat(int od, const char *o, int nd, const char *n, int f) { return do_link(od, o, nd, n, f, 1); }

/* kind: K_UNLINK, K_RMDIR or K_MKDIR. */
static int do_entry(int dirfd, const char *path, int kind, int flags, mode_t mode, int which) {
    init();
    char a[PATH_MAX];
#define CALL_ENTRY()                                                    \
    (which == 0   ? real_unlink(path)                                   \
     : which == 1 ? real_unlinkat(dirfd, path, flags)                   \
     : which == 2 ? real_rmdir(path)                                    \
     : which == 3 ? real_mkdir(path, mode)                              \
                  : real_mkdirat(dirfd, path, mode))
    if (log_fd < 0 || abs_path(dirfd, path, a) != 0 || !under(a)) return CALL_ENTRY();
    pthread_mutex_lock(&mu);
    uint64_t intent = emit(kind, 0, 0, 0, a, NULL, NULL, 0, 0);
    int r = CALL_ENTRY();
    int saved = errno;
    done(intent, r, 0);
    pthread_mutex_unlock(&mu);
    errno = saved;
    return r;
#undef CALL_ENTRY
}
int unlink(const char *p) { return do_entry(AT_FDCWD, p, K_UNLINK, 0, 0, 0); }
int unlinkat(int d, const char *p, int f) {
    return do_entry(d, p, (f & AT_REMOVEDIR) ? K_RMDIR : K_UNLINK, f, 0, 1);
}
int rmdir(const char *p) { return do_entry(AT_FDCWD, p, K_RMDIR, 0, 0, 2); }
int mkdir(const char *p, mode_t m) { return do_entry(AT_FDCWD, p, K_MKDIR, 0, m, 3); }
int mkdirat(int d, const char *p, mode_t m) { return do_entry(d, p, K_MKDIR, 0, m, 4); }

/* ---- barriers ---- */

/* how: 0 fsync, 1 fdatasync, 2 sync_file_range (recorded, but not a durability
 * barrier: it neither flushes metadata nor the device cache). */
static int do_sync(int fd, int how, off_t off, off_t n, unsigned int flags) {
    init();
    char abs[PATH_MAX];
#define CALL_SYNC()                                   \
    (how == 0   ? real_fsync(fd)                      \
     : how == 1 ? real_fdatasync(fd)                  \
                : real_sync_file_range(fd, off, n, flags))
    if (log_fd < 0 || fd == log_fd || fd_path(fd, abs) != 0 || !under(abs)) return CALL_SYNC();
    struct stat st;
    int64_t ino = -1, is_dir = 0;
    if (fstat(fd, &st) == 0) {
        ino = (int64_t)st.st_ino;
        is_dir = S_ISDIR(st.st_mode) ? 1 : 0;
    }
    pthread_mutex_lock(&mu);
    uint64_t intent = emit(K_SYNC, ino, how, is_dir, abs, NULL, NULL, 0, 0);
    pthread_mutex_unlock(&mu);
    int r = CALL_SYNC();
    int saved = errno;
    pthread_mutex_lock(&mu);
    done(intent, r, 0);
    pthread_mutex_unlock(&mu);
    errno = saved;
    return r;
#undef CALL_SYNC
}
int fsync(int fd) { return do_sync(fd, 0, 0, 0, 0); }
int fdatasync(int fd) { return do_sync(fd, 1, 0, 0, 0); }
int sync_file_range(int fd, off_t off, off_t n, unsigned int flags) {
    return do_sync(fd, 2, off, n, flags);
}

static int do_syncall(int fd, int which) {
    init();
    if (log_fd < 0) return which ? real_syncfs(fd) : (real_sync(), 0);
    pthread_mutex_lock(&mu);
    uint64_t intent = emit(K_SYNCALL, 0, 0, 0, NULL, NULL, NULL, 0, 0);
    pthread_mutex_unlock(&mu);
    int r = which ? real_syncfs(fd) : (real_sync(), 0);
    int saved = errno;
    pthread_mutex_lock(&mu);
    done(intent, r, 0);
    pthread_mutex_unlock(&mu);
    errno = saved;
    return r;
}
int syncfs(int fd) { return do_syncall(fd, 1); }
void sync(void) { do_syncall(-1, 0); }
