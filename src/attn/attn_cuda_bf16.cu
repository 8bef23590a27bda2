/* attn_cuda_bf16.cu — the op's kernels for bf16 I/O (one file per dtype: parallel builds). */
#include "attn/attn_kern_launch.h"

namespace lasp_cu {
cudaError_t launch_bf16(const DirParams &P, cudaStream_t st, int max_smem, Ran *ran) {
    return launch_any<bf16>(P, st, max_smem, ran);
}
}  // namespace lasp_cu
