// MPI's handles and constants are macros over OpenMPI's global objects; Swift cannot import those macros,
// so each one used is wrapped in a static inline function here.
#ifndef HGDPO_CMPI_SHIM_H
#define HGDPO_CMPI_SHIM_H
#include <mpi.h>

static inline MPI_Comm hg_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm hg_mpi_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Datatype hg_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype hg_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype hg_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype hg_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Datatype hg_mpi_int32(void) { return MPI_INT32_T; }
static inline MPI_Op hg_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op hg_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op hg_mpi_min(void) { return MPI_MIN; }
static inline void *hg_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Errhandler hg_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Info hg_mpi_info_null(void) { return MPI_INFO_NULL; }
static inline int hg_mpi_comm_type_shared(void) { return MPI_COMM_TYPE_SHARED; }
static inline int hg_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int hg_mpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int hg_mpi_success(void) { return MPI_SUCCESS; }
static inline int hg_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
static inline int hg_mpi_max_processor_name(void) { return MPI_MAX_PROCESSOR_NAME; }
static inline MPI_Request hg_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *hg_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Status *hg_mpi_statuses_ignore(void) { return MPI_STATUSES_IGNORE; }

#endif
