// CBLAS: OpenBLAS's C interface (sgemm and friends) plus its thread controls.
#include <cblas.h>
