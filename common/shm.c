/* shm: one place for the shared mappings' mmap and munmap. */
#include "common/shm.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "common/log.h"

void *shm_map(size_t size, const char *what)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        log_error("cannot map the shared %s: %s", what, strerror(errno));
        return NULL;
    }
    return p;
}

void shm_unmap(void *p, size_t size)
{
    if (p)
        munmap(p, size);
}
