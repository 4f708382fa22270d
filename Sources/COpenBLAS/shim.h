// OpenBLAS's CBLAS interface (Debian: libopenblas-dev). Used for the `materialized`
// baseline and the optional OpenBLAS tile backend; the engine's own kernels are Swift.
#include <cblas.h>
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
