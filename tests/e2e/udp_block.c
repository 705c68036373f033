/* udp_block.c: an LD_PRELOAD shim that drops every UDP datagram a process sends, as a
 * firewall that blocks UDP would. Built at test time (see udp_block.py); never commit the .so.
 *
 * sendto, send, sendmsg and sendmmsg on an AF_INET/AF_INET6 SOCK_DGRAM socket report success
 * and send nothing; every other socket (TCP, Unix IPC) goes to the real function. socket()
 * itself is left alone on purpose: if creating UDP sockets failed, Chromium would gather no
 * ICE candidates at all, TCP ones included, instead of behaving like a browser behind a
 * UDP-blocking firewall (gathers, then only TCP gets through).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef ssize_t (*send_fn)(int, const void *, size_t, int);
typedef ssize_t (*sendmsg_fn)(int, const struct msghdr *, int);
typedef int (*sendmmsg_fn)(int, struct mmsghdr *, unsigned int, int);

static void *real(const char *name) {
    return dlsym(RTLD_NEXT, name);
}

/* An IPv4 or IPv6 datagram socket? Asked of the kernel on each call: descriptors are reused. */
static int is_inet_dgram(int fd) {
    int type = 0;
    socklen_t type_len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 || type != SOCK_DGRAM) {
        return 0;
    }
    struct sockaddr_storage addr;
    socklen_t addr_len = sizeof addr;
    addr.ss_family = AF_UNSPEC;
    if (getsockname(fd, (struct sockaddr *)&addr, &addr_len) != 0) {
        return 0;
    }
    return addr.ss_family == AF_INET || addr.ss_family == AF_INET6;
}

static size_t iov_bytes(const struct msghdr *msg) {
    size_t total = 0;
    for (size_t i = 0; msg != NULL && i < (size_t)msg->msg_iovlen; i++) {
        total += msg->msg_iov[i].iov_len;
    }
    return total;
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen) {
    if (is_inet_dgram(fd)) {
        return (ssize_t)len;
    }
    static sendto_fn fn;
    if (fn == NULL) {
        fn = (sendto_fn)real("sendto");
    }
    return fn(fd, buf, len, flags, to, tolen);
}

ssize_t send(int fd, const void *buf, size_t len, int flags) {
    if (is_inet_dgram(fd)) {
        return (ssize_t)len;
    }
    static send_fn fn;
    if (fn == NULL) {
        fn = (send_fn)real("send");
    }
    return fn(fd, buf, len, flags);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    if (is_inet_dgram(fd)) {
        return (ssize_t)iov_bytes(msg);
    }
    static sendmsg_fn fn;
    if (fn == NULL) {
        fn = (sendmsg_fn)real("sendmsg");
    }
    return fn(fd, msg, flags);
}

int sendmmsg(int fd, struct mmsghdr *msgs, unsigned int vlen, int flags) {
    if (is_inet_dgram(fd)) {
        for (unsigned int i = 0; i < vlen; i++) {
            msgs[i].msg_len = (unsigned int)iov_bytes(&msgs[i].msg_hdr);
        }
        return (int)vlen;
    }
    static sendmmsg_fn fn;
    if (fn == NULL) {
        fn = (sendmmsg_fn)real("sendmmsg");
    }
    return fn(fd, msgs, vlen, flags);
}
