/* LD_PRELOAD shim for tests/reliability/test_faults_fsync.py: a slow disk, for one process.
 *
 * fsync and fdatasync sleep, then do the real call. The delay (milliseconds) is read on each
 * call from the file named by SLOW_FSYNC_CONTROL (missing, empty or unreadable: no delay), so a
 * test turns the slow disk on and off while the process runs. Built at test time with cc.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long delay_ms(void) {
    const char *path = getenv("SLOW_FSYNC_CONTROL");
    char buf[32] = {0};
    long ms;
    int fd;
    ssize_t n;
    if (path == NULL) return 0;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    ms = strtol(buf, NULL, 10);
    return ms > 0 ? ms : 0;
}

static void slow(void) {
    long ms = delay_ms();
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    if (ms > 0) nanosleep(&ts, NULL);
}

int fsync(int fd) {
    static int (*real)(int) = NULL;
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int) = NULL;
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow();
    return real(fd);
}
