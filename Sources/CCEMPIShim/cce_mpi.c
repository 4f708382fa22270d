// libcce_mpi.so: the C ABI of include/cce_mpi.h over Open MPI (MPI_COMM_WORLD).
// Why a separate library: `cce` is built statically for other machines
// (cuda/make_swift_bundle.sh) and must start where no MPI is installed, and one process
// needs no MPI at all; so nothing in the package links libmpi except this library, which
// CutCrossEntropyMPI opens with dlopen only when a run has more than one rank. Compiling
// against the real mpi.h (rather than looking up Open MPI's symbols by name) keeps handles
// and constants whatever the MPI implementation.
//
// Transfers are in bytes (MPI_BYTE), with counts that must fit an int: CCE_MPI_TOO_LARGE
// otherwise (the Swift side sends in rounds below that).
#include <limits.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <mpi.h>
#include "cce_mpi.h"

int cce_mpi_abi_version(void) { return CCE_MPI_ABI_VERSION; }

int cce_mpi_init(int *rank, int *size) {
    int initialized = 0, rc;
    MPI_Initialized(&initialized);
    if (!initialized) {
        int provided = 0;
        rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) return rc;
    }
    // Errors come back as codes (and become Swift errors), instead of ending the job.
    rc = MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    if (rc != MPI_SUCCESS) return rc;
    rc = MPI_Comm_rank(MPI_COMM_WORLD, rank);
    if (rc != MPI_SUCCESS) return rc;
    return MPI_Comm_size(MPI_COMM_WORLD, size);
}

int cce_mpi_finalize(void) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    return initialized && !finalized ? MPI_Finalize() : MPI_SUCCESS;
}

int cce_mpi_abort(int code) { return MPI_Abort(MPI_COMM_WORLD, code); }

int cce_mpi_barrier(void) { return MPI_Barrier(MPI_COMM_WORLD); }

static int fits(long long n) { return n >= 0 && n <= INT_MAX; }

int cce_mpi_bcast(void *buffer, long long bytes, int root) {
    if (!fits(bytes)) return CCE_MPI_TOO_LARGE;
    return MPI_Bcast(buffer, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD);
}

// counts and displacements as MPI's ints; 0 when one does not fit.
static int *to_ints(const long long *x, int n) {
    int *r = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    if (!r) return NULL;
    for (int i = 0; i < n; i++) {
        if (!fits(x[i])) { free(r); return NULL; }
        r[i] = (int)x[i];
    }
    return r;
}

static int world_size(void) {
    int size = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    return size;
}

int cce_mpi_allgatherv(const void *send, long long bytes, void *recv, const long long *counts,
                       const long long *displs) {
    int p = world_size();
    if (!fits(bytes)) return CCE_MPI_TOO_LARGE;
    int *c = to_ints(counts, p), *d = to_ints(displs, p);
    int rc = CCE_MPI_TOO_LARGE;
    if (c && d) rc = MPI_Allgatherv(send, (int)bytes, MPI_BYTE, recv, c, d, MPI_BYTE, MPI_COMM_WORLD);
    free(c); free(d);
    return rc;
}

int cce_mpi_gatherv(const void *send, long long bytes, void *recv, const long long *counts,
                    const long long *displs, int root) {
    int p = world_size(), rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (!fits(bytes)) return CCE_MPI_TOO_LARGE;
    int *c = NULL, *d = NULL;
    if (rank == root) {
        c = to_ints(counts, p); d = to_ints(displs, p);
        if (!c || !d) { free(c); free(d); return CCE_MPI_TOO_LARGE; }
    }
    int rc = MPI_Gatherv(send, (int)bytes, MPI_BYTE, recv, c, d, MPI_BYTE, root, MPI_COMM_WORLD);
    free(c); free(d);
    return rc;
}

int cce_mpi_alltoallv(const void *send, const long long *scounts, const long long *sdispls, void *recv,
                      const long long *rcounts, const long long *rdispls) {
    int p = world_size();
    int *sc = to_ints(scounts, p), *sd = to_ints(sdispls, p), *rc_ = to_ints(rcounts, p), *rd = to_ints(rdispls, p);
    int rc = CCE_MPI_TOO_LARGE;
    if (sc && sd && rc_ && rd) rc = MPI_Alltoallv(send, sc, sd, MPI_BYTE, recv, rc_, rd, MPI_BYTE, MPI_COMM_WORLD);
    free(sc); free(sd); free(rc_); free(rd);
    return rc;
}

void cce_mpi_error_string(int code, char *buffer, int length) {
    if (length <= 0) return;
    if (code == CCE_MPI_TOO_LARGE) {
        snprintf(buffer, (size_t)length, "a transfer of 2^31 bytes or more (MPI counts are ints)");
        return;
    }
    char text[MPI_MAX_ERROR_STRING];
    int n = 0;
    if (MPI_Error_string(code, text, &n) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", code);
    snprintf(buffer, (size_t)length, "%s", text);
}

void cce_mpi_library_version(char *buffer, int length) {
    if (length <= 0) return;
    char text[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    if (MPI_Get_library_version(text, &n) != MPI_SUCCESS) snprintf(text, sizeof text, "unknown MPI");
    snprintf(buffer, (size_t)length, "%s", text);
}
