/* attn_cuda_f16.cu — the kernels of attn_cuda_kern.h for f16 I/O (one file per dtype: parallel builds). */
#include "attn/attn_cuda_kern.h"

namespace lasp_cu {
cudaError_t launch_f16(const DirParams &P, cudaStream_t st, int max_smem) { return launch_any<__half>(P, st, max_smem); }
}  // namespace lasp_cu
