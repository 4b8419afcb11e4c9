/* id_list: a PostgreSQL bigint[] in its text form ("{1,2,3}", "{}"), as a statement returns the ids of
 * the rows a write took with it (a user's deletion: its posts). */
#ifndef PGAPI_ID_LIST_H
#define PGAPI_ID_LIST_H

#include <stdint.h>

/* Reads positive ids into ids[0..cap). Returns how many, or -1 when text is NULL, not a one-dimensional
 * array of positive integers, or holds more than cap. */
int id_list_parse(const char *text, int64_t *ids, int cap);

#endif
