/* handlers_openapi: GET /openapi.yaml serves docs/openapi.yaml, the very document tests/integration/
 * test_openapi.py checks against the server, as it was when the binary was built: its bytes are in the
 * binary (.incbin below; the Makefile rebuilds this file whenever the document changes), so what a
 * client fetches can never drift from what this build answers, and serving it reads no file. */
#include "worker/api/handlers.h"
#include "worker/http/http.h"

/* The document's bytes between two hidden symbols of this object (the path is the build's: make runs at
 * the top of the tree). */
__asm__(".pushsection .rodata\n"
        ".globl pgapi_openapi_yaml\n"
        ".hidden pgapi_openapi_yaml\n"
        ".globl pgapi_openapi_yaml_end\n"
        ".hidden pgapi_openapi_yaml_end\n"
        "pgapi_openapi_yaml:\n"
        ".incbin \"docs/openapi.yaml\"\n"
        "pgapi_openapi_yaml_end:\n"
        ".popsection\n");
extern const char pgapi_openapi_yaml[], pgapi_openapi_yaml_end[];

/* application/yaml is RFC 9512's type. The document changes only with the binary: no-cache makes a
 * client revalidate, and the ETag every GET carries answers it with a 304. Unauthenticated like the
 * probes: it describes the API, it holds no data. */
void handle_openapi(struct api_context *api, struct http_request *req, const struct route_args *a)
{
    (void)api;
    (void)a;
    http_header_add(req, "Cache-Control", "no-cache");
    http_respond(req, 200, "application/yaml", pgapi_openapi_yaml,
                 (size_t)(pgapi_openapi_yaml_end - pgapi_openapi_yaml));
}
