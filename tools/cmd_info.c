/* cmd_info.c — `lasp info`: what this build can do and what it sees. */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "lasp.h"
#include "opts.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef LASP_HAVE_CUDA
#include <cuda_runtime.h>
#endif
#ifdef LASP_HAVE_MPI
#include <mpi.h>
#endif
#ifdef LASP_HAVE_NCCL
#include <nccl.h>
#endif

static const char *yn(int x) { return x ? "yes" : "no"; }

static void print_cuda(void) {
#ifdef LASP_HAVE_CUDA
    int n = 0, rt = 0, drv = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    cudaError_t e = cudaGetDeviceCount(&n);
    if (drv) printf("  CUDA runtime    %d.%d, driver %d.%d\n", rt / 1000, rt % 1000 / 10, drv / 1000, drv % 1000 / 10);
    else printf("  CUDA runtime    %d.%d, no driver on this machine\n", rt / 1000, rt % 1000 / 10);
    if (e != cudaSuccess) {
        printf("  GPUs            none usable (%s)\n", cudaGetErrorString(e));
        return;
    }
    for (int i = 0; i < n; i++) {
        struct cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
        printf("  GPU %d           %s, sm_%d%d, %d SMs, %.1f GiB, %zu KiB smem/block opt-in\n", i, p.name, p.major,
               p.minor, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0, p.sharedMemPerBlockOptin / 1024);
    }
#endif
}

int cmd_info(int argc, char **argv) {
    int json = 0;
    const opt opts[] = {{"--json", OPT_FLAG, &json, NULL, "print the build features as one JSON object", 0}};
    const cmd_spec spec = {"lasp info [--json]",
                           "Prints the version, the features this build was compiled with (OpenMP, MPI, BLAS,\n"
                           "CUDA, NCCL), and the GPUs it can see.",
                           NULL, opts, N_OPTS(opts)};
    int r = opts_parse(&spec, argc, argv);
    if (r) return r > 0 ? 0 : 2;
    lasp_build_info b = lasp_get_build_info();
    if (json) {
        printf("{\"version\": \"%s\", \"openmp\": %d, \"mpi\": %d, \"blas\": %d, \"cuda\": %d, \"nccl\": %d}\n",
               b.version, b.has_openmp, b.has_mpi, b.has_blas, b.has_cuda, b.has_nccl);
        return 0;
    }
    printf("lasp %s (%s)\n", b.version, b.compiler);
    printf("features:\n");
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    printf("  OpenMP          %s (%d threads)\n", yn(b.has_openmp), threads);
#ifdef LASP_HAVE_MPI
    char ver[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(ver, &len);
    char *nl = strchr(ver, ',');
    if (nl) *nl = '\0';
    printf("  MPI             yes (%s)\n", ver);
#else
    printf("  MPI             no (hint: apt-get install openmpi-bin libopenmpi-dev, then rebuild)\n");
#endif
    printf("  BLAS            %s\n", yn(b.has_blas));
    printf("  CUDA            %s\n", yn(b.has_cuda));
#ifdef LASP_HAVE_NCCL
    int nv = 0;
    ncclGetVersion(&nv);
    printf("  NCCL            yes (%d.%d.%d)\n", nv / 10000, nv / 100 % 100, nv % 100);
#else
    printf("  NCCL            no\n");
#endif
    print_cuda();
    printf("head dims         16 32 64 128 256 (d and e independently)\n");
    return 0;
}
