// Batch normalisation in training mode over the rows of x: (M, C) = (N*H*W, C) -- hand-written CUDA.
// Compiled by CuPy (NVRTC) with -DMX_T=float|double.
// Reference and fallback: minixception/functional/batchnorm.py (the xp version).
//
// Column reductions (per channel over M rows) use the layout of the depthwise kernel
// gradient: block (32, LANES), threadIdx.x = channel (coalesced loads along the row),
// threadIdx.y = lane; grid (ceil(C/32), P) row-strided; each block writes one partial
// per channel, and the host side sums the P partials.

#ifndef MX_T
#define MX_T float
#endif
typedef MX_T real;   // the scalar type (a macro named T would clash with the CUDA headers under nvcc)
#ifndef LANES
#define LANES 8      // must match minixception/cuda/__init__.py LANES
#endif

// store the block's per-channel sum of v (one value per thread) into out[blockIdx.y * C + c]
__device__ __forceinline__ void block_column_sum(real v, real* __restrict__ out, int c, int C)
{
    __shared__ real sm[LANES][32];
    sm[threadIdx.y][threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        real s = 0;
#pragma unroll
        for (int l = 0; l < LANES; ++l) s += sm[l][threadIdx.x];
        out[(long long)blockIdx.y * C + c] = s;
    }
    __syncthreads();
}

// partial sums of x (mode 0) or of (x - mean)^2 (mode 1), per channel
extern "C" __global__ void bn_partial_moments(const real* __restrict__ x, const real* __restrict__ mean,
                                              real* __restrict__ partial, long long M, int C, int mode)
{
    const int c = blockIdx.x * 32 + threadIdx.x;
    const long long stride = (long long)gridDim.y * LANES;
    real s = 0;
    if (c < C) {
        const real mu = mode ? mean[c] : (real)0;
        for (long long r = (long long)blockIdx.y * LANES + threadIdx.y; r < M; r += stride) {
            const real v = x[r * C + c] - mu;
            s += mode ? v * v : v;
        }
    }
    block_column_sum(s, partial, c, C);
}

// y = (x - mean) * inv_std * gamma + beta
extern "C" __global__ void bn_forward_apply(const real* __restrict__ x, const real* __restrict__ mean,
                                            const real* __restrict__ inv_std, const real* __restrict__ gamma,
                                            const real* __restrict__ beta, real* __restrict__ y,
                                            long long total, int C)
{
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)blockDim.x * gridDim.x) {
        const int c = (int)(idx % C);
        y[idx] = (x[idx] - mean[c]) * inv_std[c] * gamma[c] + beta[c];
    }
}

// partial sums of dy (-> dbeta) and of dy * (x - mean) (-> dgamma / inv_std), per channel
extern "C" __global__ void bn_partial_grads(const real* __restrict__ dy, const real* __restrict__ x,
                                            const real* __restrict__ mean, real* __restrict__ p_dy,
                                            real* __restrict__ p_dyxc, long long M, int C)
{
    const int c = blockIdx.x * 32 + threadIdx.x;
    const long long stride = (long long)gridDim.y * LANES;
    real s1 = 0, s2 = 0;
    if (c < C) {
        const real mu = mean[c];
        for (long long r = (long long)blockIdx.y * LANES + threadIdx.y; r < M; r += stride) {
            const real g = dy[r * C + c];
            s1 += g;
            s2 += g * (x[r * C + c] - mu);
        }
    }
    block_column_sum(s1, p_dy, c, C);
    block_column_sum(s2, p_dyxc, c, C);
}

// dx = gamma * inv_std * (dy - dbeta / M - xhat * dgamma / M),  xhat = (x - mean) * inv_std
extern "C" __global__ void bn_backward_apply(const real* __restrict__ dy, const real* __restrict__ x,
                                             const real* __restrict__ mean, const real* __restrict__ inv_std,
                                             const real* __restrict__ gamma, const real* __restrict__ dbeta,
                                             const real* __restrict__ dgamma, real* __restrict__ dx,
                                             long long total, int C, real inv_m)
{
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)blockDim.x * gridDim.x) {
        const int c = (int)(idx % C);
        const real s = inv_std[c];
        const real xhat = (x[idx] - mean[c]) * s;
        dx[idx] = gamma[c] * s * (dy[idx] - dbeta[c] * inv_m - xhat * dgamma[c] * inv_m);
    }
}
