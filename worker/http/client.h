/* client: who the client of a request is. The socket's peer, unless the peer is one of [server]
 * trusted_proxies: then a PROXY protocol v2 header at the connection's start, or X-Forwarded-For, names
 * it. Pure functions of bytes and config, for conn.c and the unit tests; part of http's surface. */
#ifndef PGAPI_HTTP_CLIENT_H
#define PGAPI_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct config;

#define HTTP_CLIENT_MAX 46 /* INET6_ADDRSTRLEN: an address as text */

/* The PROXY protocol v2 (haproxy.org/download/2.8/doc/proxy-protocol.txt, section 2.2): a 16-byte head,
 * 12 of them a signature no HTTP request can start with, then `len` bytes of addresses and TLVs. */
#define HTTP_PROXY_V2_HEAD 16
#define HTTP_PROXY_V2_BODY_MAX 512 /* addresses (216 for AF_UNIX) and TLVs: HAProxy sends far less */

enum http_proxy_parse {
    HTTP_PROXY_NONE,      /* the bytes are not a PROXY v2 header: plain HTTP */
    HTTP_PROXY_MORE,      /* a prefix of one: wait for more bytes */
    HTTP_PROXY_ADDRESS,   /* a PROXY command: *src is the client's address */
    HTTP_PROXY_LOCAL,     /* a LOCAL command (the proxy's own health check) or an unspecified family:
                           * the socket's peer stays the client */
    HTTP_PROXY_MALFORMED, /* the signature, then something a v2 header cannot be (or too long) */
};

/* Parses the start of a connection's input (len bytes). With ADDRESS or LOCAL, *consumed is the header's
 * length (the HTTP request follows it). */
enum http_proxy_parse http_proxy_v2_parse(const unsigned char *buf, size_t len, struct sockaddr_storage *src,
                                          size_t *consumed);

/* Whether addr is in one of trusted_proxies (an IPv4-mapped IPv6 address counts as its IPv4 one). */
bool http_addr_trusted(const struct config *cfg, const struct sockaddr_storage *addr);

/* The client named by an X-Forwarded-For value: its rightmost address that is not a trusted proxy,
 * written as text into out (canonical form). False when the value names none (empty, malformed, every
 * address trusted, or cut at the header's limit): the caller keeps the peer. */
bool http_xff_client(const struct config *cfg, const char *xff, char *out, size_t cap);

/* addr as text: an IP address, "unix" for a Unix socket, "-" if unknown. */
void http_addr_format(const struct sockaddr_storage *addr, char *out, size_t cap);

#endif
