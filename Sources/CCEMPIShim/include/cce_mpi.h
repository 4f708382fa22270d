// The C ABI of libcce_mpi.so (Sources/CCEMPIShim): the few MPI operations CutCrossEntropyMPI needs, as plain C
// functions over bytes. The library (Sources/CCEMPIShim, built against Open MPI's mpi.h and
// linked to libmpi) is opened at run time with dlopen, so `cce` and the CutCrossEntropy
// library neither link MPI nor need it installed unless a run asks for more than one rank
// (Sources/CutCrossEntropyMPI/Communicator.swift says why).
//
// Every function returns 0 on success, or an MPI error code (cce_mpi_error_string names it),
// or CCE_MPI_TOO_LARGE when a byte count does not fit MPI's int counts (the caller splits
// transfers into rounds below 2^31 bytes). Counts and displacements are in bytes. Call them
// from one thread (the process's main thread: MPI_THREAD_FUNNELED).
#ifndef CCE_MPI_H
#define CCE_MPI_H

#ifdef __cplusplus
extern "C" {
#endif

#define CCE_MPI_TOO_LARGE (-2)
#define CCE_MPI_ABI_VERSION 1

/// The ABI version this library implements (CCE_MPI_ABI_VERSION).
typedef int (*cce_mpi_abi_version_fn)(void);
/// MPI_Init_thread (FUNNELED) and MPI_COMM_WORLD's rank and size; errors on the world
/// communicator are returned, not fatal. Safe to call once per process.
typedef int (*cce_mpi_init_fn)(int *rank, int *size);
/// MPI_Finalize (when initialized and not yet finalized).
typedef int (*cce_mpi_finalize_fn)(void);
/// MPI_Abort(MPI_COMM_WORLD, code): ends every rank.
typedef int (*cce_mpi_abort_fn)(int code);
typedef int (*cce_mpi_barrier_fn)(void);
/// MPI_Bcast of `bytes` bytes from `root`.
typedef int (*cce_mpi_bcast_fn)(void *buffer, long long bytes, int root);
/// MPI_Allgatherv: this rank's `bytes` bytes of `send`; `recv` gets rank r's at displs[r]
/// (counts[r] bytes each).
typedef int (*cce_mpi_allgatherv_fn)(const void *send, long long bytes, void *recv, const long long *counts,
                                     const long long *displs);
/// MPI_Gatherv to `root` (recv, counts, displs read on the root only).
typedef int (*cce_mpi_gatherv_fn)(const void *send, long long bytes, void *recv, const long long *counts,
                                  const long long *displs, int root);
/// MPI_Alltoallv: scounts[r] bytes at sdispls[r] go to rank r; rank r's arrive at rdispls[r].
typedef int (*cce_mpi_alltoallv_fn)(const void *send, const long long *scounts, const long long *sdispls,
                                    void *recv, const long long *rcounts, const long long *rdispls);
/// The text of an error code, into `buffer` (`length` bytes, NUL-terminated).
typedef void (*cce_mpi_error_string_fn)(int code, char *buffer, int length);
/// MPI_Get_library_version's text, into `buffer`.
typedef void (*cce_mpi_library_version_fn)(char *buffer, int length);

int cce_mpi_abi_version(void);
int cce_mpi_init(int *rank, int *size);
int cce_mpi_finalize(void);
int cce_mpi_abort(int code);
int cce_mpi_barrier(void);
int cce_mpi_bcast(void *buffer, long long bytes, int root);
int cce_mpi_allgatherv(const void *send, long long bytes, void *recv, const long long *counts, const long long *displs);
int cce_mpi_gatherv(const void *send, long long bytes, void *recv, const long long *counts, const long long *displs,
                    int root);
int cce_mpi_alltoallv(const void *send, const long long *scounts, const long long *sdispls, void *recv,
                      const long long *rcounts, const long long *rdispls);
void cce_mpi_error_string(int code, char *buffer, int length);
void cce_mpi_library_version(char *buffer, int length);

#ifdef __cplusplus
}
#endif
#endif
