/* attn_cuda_f32.cu — the kernels of attn_cuda_kern.h for f32 I/O (one file per dtype: parallel builds). */
#include "attn/attn_cuda_kern.h"

namespace lasp_cu {
cudaError_t launch_f32(const DirParams &P, cudaStream_t st, int max_smem) { return launch_any<float>(P, st, max_smem); }
}  // namespace lasp_cu
