// Malloc: the glibc allocator settings Swift cannot reach (malloc.h is not in the Glibc module).
#include "CKernels.h"
#include <malloc.h>

int ck_set_malloc_mmap_threshold(int threshold) {
    int ok = mallopt(M_MMAP_THRESHOLD, threshold);
    ok &= mallopt(M_TRIM_THRESHOLD, threshold);
    return ok == 1 ? 0 : -1;
}
