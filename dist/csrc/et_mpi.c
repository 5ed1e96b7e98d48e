/* The MPI calls et-dist makes, behind plain C functions: MPI's handles (communicators,
 * datatypes, operations) are implementation-specific (pointers in Open MPI, integers in
 * MPICH), so only C compiled against the installed <mpi.h> can name them. */
#include <limits.h>
#include <mpi.h>
#include <stdint.h>

int et_mpi_init(int *rank, int *world, int *local_rank, int *local_size) {
    int provided = 0, rc;
    /* Only the training thread calls MPI. */
    rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return rc;
    if ((rc = MPI_Comm_rank(MPI_COMM_WORLD, rank)) != MPI_SUCCESS) return rc;
    if ((rc = MPI_Comm_size(MPI_COMM_WORLD, world)) != MPI_SUCCESS) return rc;
    /* The ranks sharing this node, for the GPU a rank takes. */
    MPI_Comm node;
    if ((rc = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, *rank, MPI_INFO_NULL, &node)) != MPI_SUCCESS) return rc;
    if ((rc = MPI_Comm_rank(node, local_rank)) != MPI_SUCCESS) return rc;
    if ((rc = MPI_Comm_size(node, local_size)) != MPI_SUCCESS) return rc;
    return MPI_Comm_free(&node);
}

/* In-place sums over all ranks, in pieces of at most INT_MAX elements (MPI counts are ints). */
int et_mpi_allreduce_f32(float *buf, int64_t n) {
    for (int64_t done = 0; done < n;) {
        int count = (int)(n - done > INT_MAX ? INT_MAX : n - done);
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + done, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
        done += count;
    }
    return MPI_SUCCESS;
}

int et_mpi_allreduce_f64(double *buf, int64_t n) {
    for (int64_t done = 0; done < n;) {
        int count = (int)(n - done > INT_MAX ? INT_MAX : n - done);
        int rc = MPI_Allreduce(MPI_IN_PLACE, buf + done, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
        done += count;
    }
    return MPI_SUCCESS;
}

int et_mpi_bcast(void *buf, int64_t n, int root) {
    for (int64_t done = 0; done < n;) {
        int count = (int)(n - done > INT_MAX ? INT_MAX : n - done);
        int rc = MPI_Bcast((char *)buf + done, count, MPI_BYTE, root, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) return rc;
        done += count;
    }
    return MPI_SUCCESS;
}

int et_mpi_barrier(void) { return MPI_Barrier(MPI_COMM_WORLD); }

void et_mpi_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

int et_mpi_finalize(void) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    return finalized ? MPI_SUCCESS : MPI_Finalize();
}

void et_mpi_error_string(int code, char *out, int len) {
    int n = 0;
    char text[MPI_MAX_ERROR_STRING];
    if (MPI_Error_string(code, text, &n) != MPI_SUCCESS) n = 0;
    int i = 0;
    for (; i + 1 < len && i < n; i++) out[i] = text[i];
    if (len > 0) out[i] = 0;
}

/* The library's own version, for messages. */
void et_mpi_library_version(char *out, int len) {
    char text[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    if (MPI_Get_library_version(text, &n) != MPI_SUCCESS) n = 0;
    int i = 0;
    for (; i + 1 < len && i < n && text[i] != '\n'; i++) out[i] = text[i];
    if (len > 0) out[i] = 0;
}
