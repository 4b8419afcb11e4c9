/* http_status: the one table of the HTTP statuses pgapi answers (or, for 499, accounts), with their
 * reason phrases. The status line (worker/http/response.c) and the metrics' status label set
 * (common/metrics.c) both come from it, so a new status is one line here. */
#ifndef PGAPI_HTTP_STATUS_H
#define PGAPI_HTTP_STATUS_H

/* X(code, reason phrase), in code order (the order of the metrics' series) */
#define HTTP_STATUS_TABLE(X)                                                         \
    X(100, "Continue")                                                               \
    X(200, "OK")                                                                     \
    X(201, "Created")                                                                \
    X(204, "No Content")                                                             \
    X(304, "Not Modified")                                                           \
    X(400, "Bad Request")                                                            \
    X(404, "Not Found")                                                              \
    X(405, "Method Not Allowed")                                                     \
    X(408, "Request Timeout")                                                        \
    X(409, "Conflict")                                                               \
    X(411, "Length Required")                                                        \
    X(412, "Precondition Failed")                                                    \
    X(413, "Content Too Large")                                                      \
    X(414, "URI Too Long")                                                           \
    X(415, "Unsupported Media Type")                                                 \
    X(421, "Misdirected Request")                                                    \
    X(422, "Unprocessable Content")                                                  \
    X(429, "Too Many Requests")                                                      \
    X(431, "Request Header Fields Too Large")                                        \
    X(499, "Client Closed Request") /* never sent: the client went (nginx's code) */ \
    X(500, "Internal Server Error")                                                  \
    X(501, "Not Implemented")                                                        \
    X(503, "Service Unavailable")                                                    \
    X(504, "Gateway Timeout")

#define HTTP_STATUS_PLUS_ONE_(code, reason) +1
enum { HTTP_STATUS_COUNT = 0 HTTP_STATUS_TABLE(HTTP_STATUS_PLUS_ONE_) };

#endif
