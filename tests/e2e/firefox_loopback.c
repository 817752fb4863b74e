/* Firefox's ICE on 127.0.0.1 only: preloaded into the test's Firefox (LD_PRELOAD), built at test time by
 * tests/e2e/firefox_bidi.py, never committed as a binary.
 *
 * Firefox 153 gathers host candidates in its socket process (nICEr, dom/media/webrtc/transport). With
 * media.peerconnection.ice.default_address_only it keeps one address per family, "the default address",
 * found in ice_ctx.c (nr_ice_get_default_address) by connect()ing a UDP socket to 8.8.8.8:53 (IPv4) or
 * 2001:4860:4860::8888:53 (IPv6) and reading the socket's own address back: the address of the route to the
 * outside, the machine's own (not loopback) address. A UDP connect() sends nothing; it only picks a route.
 *
 * This file answers those two probes: the IPv4 probe is pointed at 127.0.0.1, so the default address, and
 * the only IPv4 host candidate, is 127.0.0.1 on lo; the IPv6 probe fails. Firefox then still offers ::1, so
 * binding to an IPv6 address other than the wildcard fails too: no IPv6 candidate at all. Every other
 * connect() and bind() goes to libc untouched.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

static int is_ipv4_probe(const struct sockaddr *addr, socklen_t len) {
    struct in_addr google;
    inet_pton(AF_INET, "8.8.8.8", &google);
    return addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in) &&
           ((const struct sockaddr_in *)addr)->sin_addr.s_addr == google.s_addr;
}

static int is_ipv6_probe(const struct sockaddr *addr, socklen_t len) {
    struct in6_addr google;
    inet_pton(AF_INET6, "2001:4860:4860::8888", &google);
    return addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6) &&
           !memcmp(&((const struct sockaddr_in6 *)addr)->sin6_addr, &google, sizeof google);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static connect_fn real;
    if (!real) real = (connect_fn)dlsym(RTLD_NEXT, "connect");
    if (addr && is_ipv4_probe(addr, len)) {
        struct sockaddr_in loopback = *(const struct sockaddr_in *)addr;
        loopback.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return real(fd, (const struct sockaddr *)&loopback, sizeof loopback);
    }
    if (addr && is_ipv6_probe(addr, len)) {
        errno = ENETUNREACH;
        return -1;
    }
    return real(fd, addr, len);
}

/* Without an IPv6 default address Firefox still offers ::1: binding a socket to ::1 (or to any IPv6 address
 * but the wildcard) fails here, so that candidate is never created. */
int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real;
    if (!real) real = (bind_fn)dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6) &&
        !IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)addr)->sin6_addr)) {
        errno = EADDRNOTAVAIL;
        return -1;
    }
    return real(fd, addr, len);
}
