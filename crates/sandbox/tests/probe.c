/* Escape probe for Warden's sandbox suite, compiled by the tests at run time.
 * `probe ACTION ARGS...` attempts one action and prints `OK` (exit 0) when it succeeded or
 * `DENIED <ERRNO>` (exit 1) when it failed. The same binary runs inside the sandbox (where every
 * attempt must fail) and outside or with the resource granted (the control, which must succeed). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int denied(void) {
    const char *name = strerrorname_np(errno);
    printf("DENIED %s\n", name ? name : "E?");
    return 1;
}
static int ok(void) { printf("OK\n"); return 0; }
static int check(long r) { return r < 0 ? denied() : ok(); }

static void timeout_ms(int fd, int ms) {
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static struct sockaddr_in v4(const char *host, const char *port) {
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(port)) };
    inet_pton(AF_INET, host, &a.sin_addr);
    return a;
}

static int tcp_connect(const char *host, const char *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    timeout_ms(fd, 2000);
    struct sockaddr_in a = v4(host, port);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) return -1;
    return fd;
}

/* A minimal TLS 1.2-style ClientHello carrying `sni`. */
static size_t client_hello(unsigned char *out, const char *sni) {
    size_t n = strlen(sni), i = 0;
    unsigned char body[600];
    size_t b = 0;
    body[b++] = 3; body[b++] = 3;
    memset(body + b, 7, 32); b += 32;
    body[b++] = 0;                       /* session id */
    body[b++] = 0; body[b++] = 2; body[b++] = 0x13; body[b++] = 0x01;
    body[b++] = 1; body[b++] = 0;        /* compression */
    size_t ext = 4 + 2 + 3 + n;
    body[b++] = ext >> 8; body[b++] = ext & 0xff;
    body[b++] = 0; body[b++] = 0;        /* server_name */
    body[b++] = (n + 5) >> 8; body[b++] = (n + 5) & 0xff;
    body[b++] = (n + 3) >> 8; body[b++] = (n + 3) & 0xff;
    body[b++] = 0; body[b++] = n >> 8; body[b++] = n & 0xff;
    memcpy(body + b, sni, n); b += n;
    out[i++] = 0x16; out[i++] = 3; out[i++] = 1;
    out[i++] = (b + 4) >> 8; out[i++] = (b + 4) & 0xff;
    out[i++] = 1; out[i++] = 0; out[i++] = b >> 8; out[i++] = b & 0xff;
    memcpy(out + i, body, b);
    return i + b;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *a = argv[1];
    const char *x = argc > 2 ? argv[2] : "";
    const char *y = argc > 3 ? argv[3] : "";
    setvbuf(stdout, NULL, _IONBF, 0);

    if (!strcmp(a, "write")) {
        int fd = open(x, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, "pwned\n", 6) != 6) return denied();
        return ok();
    }
    if (!strcmp(a, "read")) {
        char buf[64];
        int fd = open(x, O_RDONLY);
        if (fd < 0 || read(fd, buf, sizeof buf) < 0) return denied();
        return ok();
    }
    if (!strcmp(a, "openw")) return check(open(x, O_WRONLY));
    if (!strcmp(a, "openrw")) return check(open(x, O_RDWR));
    if (!strcmp(a, "stat")) { struct stat st; return check(stat(x, &st)); }
    if (!strcmp(a, "symlink-read")) {
        char buf[64];
        if (symlink(x, y) < 0) return denied();
        int fd = open(y, O_RDONLY);
        if (fd < 0 || read(fd, buf, sizeof buf) < 0) return denied();
        return ok();
    }
    if (!strcmp(a, "hardlink")) return check(link(x, y));
    if (!strcmp(a, "chmod")) return check(chmod(x, strtol(y, 0, 8)));
    if (!strcmp(a, "create-mode")) return check(open(x, O_WRONLY | O_CREAT | O_EXCL, strtol(y, 0, 8)));
    if (!strcmp(a, "mknod")) return check(mknod(x, S_IFCHR | 0666, makedev(1, 3)));
    if (!strcmp(a, "kill")) return check(kill(atoi(x), atoi(y)));
    if (!strcmp(a, "ptrace-child") || !strcmp(a, "vmread-child")) {
        static volatile long secret = 42;
        pid_t pid = fork();
        if (pid == 0) { pause(); _exit(0); }
        long r;
        if (!strcmp(a, "ptrace-child")) {
            r = ptrace(PTRACE_ATTACH, pid, 0, 0);
        } else {
            long v = 0;
            struct iovec local = { &v, sizeof v }, remote = { (void *)&secret, sizeof v };
            r = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        }
        int e = errno;
        kill(pid, SIGKILL);
        waitpid(pid, 0, 0);
        errno = e;
        return check(r);
    }
    if (!strcmp(a, "tiocsti")) { char c = 'x'; return check(ioctl(0, TIOCSTI, &c)); }
    if (!strcmp(a, "tioclinux")) { char c = 12; return check(ioctl(0, TIOCLINUX, &c)); }
    if (!strcmp(a, "fd")) { char buf[16]; return check(read(atoi(x), buf, sizeof buf)); }
    if (!strcmp(a, "env")) { if (getenv(x)) return ok(); errno = ENOENT; return denied(); }
    if (!strcmp(a, "unshare")) return check(unshare(CLONE_NEWUSER));
    if (!strcmp(a, "mount")) return check(mount("none", x, "tmpfs", 0, ""));
    if (!strcmp(a, "chroot")) return check(chroot(x));
    if (!strcmp(a, "clone3") || !strcmp(a, "clone-ns")) {
        long pid;
        if (!strcmp(a, "clone3")) {
            struct clone_args args = { .flags = CLONE_NEWUSER, .exit_signal = SIGCHLD };
            pid = syscall(SYS_clone3, &args, sizeof args);
        } else {
            pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        }
        if (pid == 0) _exit(0);
        if (pid > 0) waitpid(pid, 0, 0);
        return check(pid);
    }
    if (!strcmp(a, "io_uring")) {
        unsigned char params[120] = { 0 };
        return check(syscall(SYS_io_uring_setup, 4, params));
    }
    if (!strcmp(a, "bpf")) {
        union bpf_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.map_type = BPF_MAP_TYPE_ARRAY;
        attr.key_size = 4; attr.value_size = 4; attr.max_entries = 1;
        return check(syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
    }
    if (!strcmp(a, "userfaultfd")) return check(syscall(SYS_userfaultfd, O_CLOEXEC));
    if (!strcmp(a, "perf")) {
        struct perf_event_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.size = sizeof attr;
        attr.type = PERF_TYPE_SOFTWARE;
        attr.config = PERF_COUNT_SW_TASK_CLOCK;
        attr.exclude_kernel = 1;
        return check(syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
    }
    if (!strcmp(a, "keyctl")) return check(syscall(SYS_add_key, "user", "warden-probe", "x", 1, -2));
    if (!strcmp(a, "handle")) {
        struct { struct file_handle h; unsigned char b[128]; } fh;
        int mount_id;
        fh.h.handle_bytes = 128;
        if (name_to_handle_at(AT_FDCWD, x, &fh.h, &mount_id, 0) < 0) return denied();
        return check(open_by_handle_at(AT_FDCWD, &fh.h, O_RDONLY));
    }
    if (!strcmp(a, "tcp")) return check(tcp_connect(x, y));
    if (!strcmp(a, "udp") || !strcmp(a, "dns")) {
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        if (fd < 0) return denied();
        timeout_ms(fd, 1000);
        struct sockaddr_in to = v4(x, y);
        /* For `dns`, a real query for example.com/A. */
        unsigned char q[] = { 0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'e', 'x', 'a', 'm', 'p',
                              'l', 'e', 3, 'c', 'o', 'm', 0, 0, 1, 0, 1 };
        if (sendto(fd, q, sizeof q, 0, (struct sockaddr *)&to, sizeof to) < 0) return denied();
        char buf[512];
        return check(recv(fd, buf, sizeof buf, 0));
    }
    if (!strcmp(a, "icmp")) {
        int fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
        if (fd < 0) return denied();
        timeout_ms(fd, 1000);
        struct icmphdr h = { .type = ICMP_ECHO };
        h.un.echo.id = htons(getpid() & 0xffff);
        unsigned sum = 0; unsigned short *p = (unsigned short *)&h;
        for (size_t i = 0; i < sizeof h / 2; i++) sum += p[i];
        while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
        h.checksum = ~sum;
        struct sockaddr_in to = v4(x, "0");
        if (sendto(fd, &h, sizeof h, 0, (struct sockaddr *)&to, sizeof to) < 0) return denied();
        char buf[512];
        return check(recv(fd, buf, sizeof buf, 0));
    }
    if (!strcmp(a, "unix") || !strcmp(a, "abstract")) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        socklen_t len;
        if (!strcmp(a, "unix")) {
            strncpy(sa.sun_path, x, sizeof sa.sun_path - 1);
            len = sizeof sa;
        } else {
            strncpy(sa.sun_path + 1, x, sizeof sa.sun_path - 2);
            len = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(x);
        }
        return check(connect(fd, (struct sockaddr *)&sa, len));
    }
    if (!strcmp(a, "raw")) return check(socket(AF_INET, SOCK_RAW, IPPROTO_TCP));
    if (!strcmp(a, "packet")) return check(socket(AF_PACKET, SOCK_RAW, 0));
    if (!strcmp(a, "netlink")) return check(socket(AF_NETLINK, SOCK_RAW, 0));
    if (!strcmp(a, "vsock")) return check(socket(AF_VSOCK, SOCK_STREAM, 0));
    if (!strcmp(a, "fork")) {
        int n = atoi(x), made = 0, e = 0;
        pid_t kids[4096];
        for (; made < n && made < 4096; made++) {
            pid_t pid = fork();
            if (pid == 0) { sleep(5); _exit(0); }
            if (pid < 0) { e = errno; break; }
            kids[made] = pid;
        }
        for (int i = 0; i < made; i++) { kill(kids[i], SIGKILL); waitpid(kids[i], 0, 0); }
        errno = e;
        return made == n ? ok() : denied();
    }
    if (!strcmp(a, "alloc")) {
        size_t mb = atoi(x);
        for (size_t i = 0; i < mb; i++) {
            char *p = malloc(1 << 20);
            if (!p) return denied();
            memset(p, 1, 1 << 20);
        }
        return ok();
    }
    if (!strcmp(a, "fill")) {
        signal(SIGXFSZ, SIG_IGN);
        int fd = open(x, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) return denied();
        static char chunk[1 << 20];
        memset(chunk, 'f', sizeof chunk);
        for (int i = 0; i < atoi(y); i++) {
            if (write(fd, chunk, sizeof chunk) != (ssize_t)sizeof chunk) { int e = errno; unlink(x); errno = e; return denied(); }
        }
        unlink(x);
        return ok();
    }
    if (!strcmp(a, "fds")) {
        for (int i = 0; i < atoi(x); i++) if (open("/dev/null", O_RDONLY) < 0) return denied();
        return ok();
    }
    if (!strcmp(a, "spin")) { for (;;) { } }
    if (!strcmp(a, "flood")) {
        static char chunk[1 << 16];
        memset(chunk, 'x', sizeof chunk);
        for (int i = 0; i < atoi(x) * 16; i++) if (write(1, chunk, sizeof chunk) < 0) return 1;
        return 0;
    }
    if (!strcmp(a, "euid")) { if (geteuid() == 0) return ok(); errno = EPERM; return denied(); }
    if (!strcmp(a, "daemon")) {
        if (fork() == 0) {
            setsid();
            if (fork() == 0) {
                int null = open("/dev/null", O_RDWR);
                dup2(null, 0); dup2(null, 1); dup2(null, 2);
                for (long i = 0; i < 600; i++) {
                    char tmp[4096];
                    snprintf(tmp, sizeof tmp, "%s.tmp", x);
                    FILE *f = fopen(tmp, "w");
                    if (f) { fprintf(f, "%ld %d\n", i, getpid()); fclose(f); rename(tmp, x); }
                    usleep(50000);
                }
                _exit(0);
            }
            _exit(0);
        }
        wait(0);
        return ok();
    }
    if (!strcmp(a, "connect-proxy")) {
        /* connect-proxy PROXYPORT HOST:PORT SNI */
        int fd = tcp_connect("127.0.0.1", x);
        if (fd < 0) return denied();
        char req[512], resp[512];
        snprintf(req, sizeof req, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", y, y);
        if (write(fd, req, strlen(req)) < 0) return denied();
        ssize_t n = read(fd, resp, sizeof resp - 1);
        if (n <= 0) { errno = ECONNRESET; return denied(); }
        resp[n] = 0;
        if (strncmp(resp, "HTTP/1.1 200", 12)) { errno = EACCES; return denied(); }
        unsigned char hello[700];
        size_t len = client_hello(hello, argc > 4 ? argv[4] : "");
        if (write(fd, hello, len) < 0) return denied();
        n = read(fd, resp, sizeof resp);
        if (n <= 0) { errno = ECONNRESET; return denied(); }
        return ok();
    }
    fprintf(stderr, "unknown action %s\n", a);
    return 2;
}
