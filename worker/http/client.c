/* client: the client's address behind trusted proxies. A client's own X-Forwarded-For or PROXY header
 * would let it pick any address (and so any rate-limit budget), so both are read only from a peer in
 * [server] trusted_proxies; X-Forwarded-For is read from its right end, where each trusted proxy
 * appended the address it saw, skipping the proxies themselves. */
#include "worker/http/client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include "common/config.h"
#include "worker/http/headers.h"

static const unsigned char PROXY_V2_SIG[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

enum { PP2_CMD_LOCAL = 0, PP2_CMD_PROXY = 1 };
enum { PP2_AF_UNSPEC = 0, PP2_AF_INET = 1, PP2_AF_INET6 = 2, PP2_AF_UNIX = 3 };

static enum http_proxy_parse proxy_v2_address(const unsigned char *body, size_t blen, int af,
                                              struct sockaddr_storage *src)
{
    memset(src, 0, sizeof(*src));
    if (af == PP2_AF_INET) {
        if (blen < 12) /* src, dst addresses, src, dst ports */
            return HTTP_PROXY_MALFORMED;
        struct sockaddr_in *in = (struct sockaddr_in *)src;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, body, 4);
        memcpy(&in->sin_port, body + 8, 2);
        return HTTP_PROXY_ADDRESS;
    }
    if (af == PP2_AF_INET6) {
        if (blen < 36)
            return HTTP_PROXY_MALFORMED;
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)src;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, body, 16);
        memcpy(&in6->sin6_port, body + 32, 2);
        return HTTP_PROXY_ADDRESS;
    }
    if (af == PP2_AF_UNIX)
        return blen < 216 ? HTTP_PROXY_MALFORMED : HTTP_PROXY_LOCAL; /* a path names no client */
    return HTTP_PROXY_LOCAL; /* AF_UNSPEC: the spec says use the peer */
}

enum http_proxy_parse http_proxy_v2_parse(const unsigned char *buf, size_t len, struct sockaddr_storage *src,
                                          size_t *consumed)
{
    size_t cmp = len < sizeof(PROXY_V2_SIG) ? len : sizeof(PROXY_V2_SIG);
    if (len == 0)
        return HTTP_PROXY_MORE;
    if (memcmp(buf, PROXY_V2_SIG, cmp) != 0)
        return HTTP_PROXY_NONE;
    if (len < HTTP_PROXY_V2_HEAD)
        return HTTP_PROXY_MORE;
    int version = buf[12] >> 4, command = buf[12] & 0x0F, af = buf[13] >> 4, proto = buf[13] & 0x0F;
    size_t blen = (size_t)buf[14] << 8 | buf[15];
    if (version != 2 || (command != PP2_CMD_LOCAL && command != PP2_CMD_PROXY) || af > PP2_AF_UNIX ||
        proto > 2 || blen > HTTP_PROXY_V2_BODY_MAX)
        return HTTP_PROXY_MALFORMED;
    if (len < HTTP_PROXY_V2_HEAD + blen)
        return HTTP_PROXY_MORE;
    *consumed = HTTP_PROXY_V2_HEAD + blen;
    if (command == PP2_CMD_LOCAL)
        return HTTP_PROXY_LOCAL;
    return proxy_v2_address(buf + HTTP_PROXY_V2_HEAD, blen, af, src);
}

/* The first `bits` bits of a and b are equal. */
static bool prefix_equal(const unsigned char *a, const unsigned char *b, int bits)
{
    int whole = bits / 8, rest = bits % 8;
    if (memcmp(a, b, (size_t)whole) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xFF << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

static const unsigned char V4_MAPPED[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF };

/* family and the address bytes of addr, an IPv4-mapped IPv6 address as IPv4; false for others */
static bool addr_bytes(const struct sockaddr_storage *addr, int *family, const unsigned char **bytes)
{
    if (addr->ss_family == AF_INET) {
        *family = AF_INET;
        *bytes = (const unsigned char *)&((const struct sockaddr_in *)addr)->sin_addr;
        return true;
    }
    if (addr->ss_family != AF_INET6)
        return false;
    const unsigned char *b = (const unsigned char *)&((const struct sockaddr_in6 *)addr)->sin6_addr;
    bool mapped = memcmp(b, V4_MAPPED, sizeof(V4_MAPPED)) == 0;
    *family = mapped ? AF_INET : AF_INET6;
    *bytes = mapped ? b + 12 : b;
    return true;
}

bool http_addr_trusted(const struct config *cfg, const struct sockaddr_storage *addr)
{
    int family;
    const unsigned char *bytes;
    if (!addr || !addr_bytes(addr, &family, &bytes))
        return false;
    for (int i = 0; i < cfg->trusted_proxy_count; i++) {
        const struct config_cidr *n = &cfg->trusted_proxies[i];
        if (n->family == family && prefix_equal(bytes, n->addr, n->bits))
            return true;
    }
    return false;
}

/* One X-Forwarded-For element (blanks trimmed) as an address; false when it is not an IP literal. */
static bool xff_element_parse(const char *s, size_t len, struct sockaddr_storage *out)
{
    char text[HTTP_CLIENT_MAX];
    while (len && (s[0] == ' ' || s[0] == '\t'))
        s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    if (len == 0 || len >= sizeof(text))
        return false;
    memcpy(text, s, len);
    text[len] = '\0';
    memset(out, 0, sizeof(*out));
    struct sockaddr_in *in = (struct sockaddr_in *)out;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, text, &in->sin_addr) == 1) {
        out->ss_family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, text, &in6->sin6_addr) == 1) {
        out->ss_family = AF_INET6;
        return true;
    }
    return false;
}

bool http_xff_client(const struct config *cfg, const char *xff, char *out, size_t cap)
{
    size_t len = strlen(xff);
    if (len == 0 || len >= HTTP_XFF_MAX) /* cut at the table's limit: its right end is lost */
        return false;
    for (size_t end = len;;) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',')
            start--;
        struct sockaddr_storage a;
        /* a malformed element stops the walk: what lies left of it came through nobody we trust */
        if (!xff_element_parse(xff + start, end - start, &a))
            return false;
        if (!http_addr_trusted(cfg, &a)) {
            http_addr_format(&a, out, cap);
            return true;
        }
        if (start == 0)
            return false;
        end = start - 1;
    }
}

void http_addr_format(const struct sockaddr_storage *addr, char *out, size_t cap)
{
    const void *a = NULL;
    if (addr && addr->ss_family == AF_INET)
        a = &((const struct sockaddr_in *)addr)->sin_addr;
    else if (addr && addr->ss_family == AF_INET6)
        a = &((const struct sockaddr_in6 *)addr)->sin6_addr;
    if (a && inet_ntop(addr->ss_family, a, out, (socklen_t)cap))
        return;
    snprintf(out, cap, "%s", addr && addr->ss_family == AF_UNIX ? "unix" : "-");
}
