/* notify: systemd's sd_notify protocol (READY=1, RELOADING=1, STOPPING=1, STATUS=...). */
#ifndef PGAPI_NOTIFY_H
#define PGAPI_NOTIFY_H

/* Sends `state` to $NOTIFY_SOCKET; a no-op when the variable is unset. Failures are logged once. */
void notify_send(const char *state);

#endif
