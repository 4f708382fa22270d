// A 4-rank check of the carried Open MPI (scripts/device/mpi_check.sh): all-gathers 16 MB per rank 5 times.
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int r, p; MPI_Comm_rank(MPI_COMM_WORLD, &r); MPI_Comm_size(MPI_COMM_WORLD, &p);
  int n = 1 << 22; float *a = malloc(n * 4), *b = malloc((size_t)n * 4 * p);
  for (int i = 0; i < n; i++) a[i] = r + i * 1e-6f;
  double t0 = MPI_Wtime();
  for (int k = 0; k < 5; k++) MPI_Allgather(a, n, MPI_FLOAT, b, n, MPI_FLOAT, MPI_COMM_WORLD);
  double t = MPI_Wtime() - t0;
  float s = 0; for (int q = 0; q < p; q++) s += b[(size_t)q * n];
  char v[MPI_MAX_LIBRARY_VERSION_STRING]; int len; MPI_Get_library_version(v, &len);
  if (r == 0) printf("ranks %d sum %g allgather 16MB x5: %.3f s (%.1f GB/s per rank recv)\n%.60s\n", p, s, t, 5.0 * n * 4 * (p - 1) / t / 1e9, v);
  MPI_Finalize(); return 0;
}
