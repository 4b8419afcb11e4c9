/* listener: binds the listening socket the master opens once and every worker inherits. */
#ifndef PGAPI_LISTENER_H
#define PGAPI_LISTENER_H

/* Returns a non-blocking listening fd bound to host:port, or -1 (logged). */
int listener_open(const char *host, int port, int backlog) __attribute__((warn_unused_result));

#endif
