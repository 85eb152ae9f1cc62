// Batch normalisation in training mode over the rows of x: (M, C) = (N*H*W, C) -- hand-written CUDA.
// Compiled by CuPy (NVRTC) with -DMX_T=float|double.
// Reference: minixception/functional/batchnorm.py (the xp version); the tests prove them equal.
//
// Three launches forward, three backward, whatever the size:
//   forward   bn_partial_stats  (per-block mean and M2 of each channel, Welford / Chan)
//             bn_finish_stats   (combine the P partials: mean, var, inv_std; moving statistics)
//             bn_apply          (y = (x - mean) * scale + beta)
//   backward  bn_partial_grads  (per-block sums of dy and dy * (x - mean))
//             bn_finish_grads   (dbeta, dgamma and the two coefficients of dx)
//             bn_apply          (dx = dy * scale + (x - mean) * xcoef + shift, the forward's kernel)
//
// Column reductions use block (32, LANES): threadIdx.x = channel (coalesced loads along a row),
// threadIdx.y = lane; grid (ceil(C/32), P); block row blockIdx.y takes rows
// blockIdx.y*LANES + lane + m*P*LANES and writes one partial per channel.

#ifndef MX_T
#define MX_T float
#endif
typedef MX_T real;   // the scalar type (a macro named T would clash with the CUDA headers under nvcc)
#ifndef LANES
#define LANES 8      // must match LANES in minixception/kernels/cuda/batchnorm.py
#endif

// Per-block statistics of each channel: count n (rows seen), mean and M2 = sum (x - mean)^2.
// Each thread runs Welford's update over its rows; the lanes are merged with Chan's formula,
// which never subtracts two large sums (no cancellation, unlike sum(x^2) - M mean^2).
extern "C" __global__ void bn_partial_stats(const real* __restrict__ x, real* __restrict__ p_mean,
                                            real* __restrict__ p_m2, long long M, int C)
{
    __shared__ real s_n[LANES][32], s_mean[LANES][32], s_m2[LANES][32];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const long long stride = (long long)gridDim.y * LANES;
    real n = 0, mean = 0, m2 = 0;
    if (c < C) {
        for (long long r = (long long)blockIdx.y * LANES + threadIdx.y; r < M; r += stride) {
            const real v = x[r * C + c];
            n += 1;
            const real d = v - mean;
            mean += d / n;
            m2 += d * (v - mean);
        }
    }
    s_n[threadIdx.y][threadIdx.x] = n;
    s_mean[threadIdx.y][threadIdx.x] = mean;
    s_m2[threadIdx.y][threadIdx.x] = m2;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        real na = s_n[0][threadIdx.x], ma = s_mean[0][threadIdx.x], qa = s_m2[0][threadIdx.x];
#pragma unroll
        for (int l = 1; l < LANES; ++l) {
            const real nb = s_n[l][threadIdx.x];
            if (nb == 0) continue;
            const real nab = na + nb, d = s_mean[l][threadIdx.x] - ma;
            ma += d * (nb / nab);
            qa += s_m2[l][threadIdx.x] + d * d * (na * nb / nab);
            na = nab;
        }
        p_mean[(long long)blockIdx.y * C + c] = ma;
        p_m2[(long long)blockIdx.y * C + c] = qa;
    }
}

// Combine the P partials of each channel (one thread per channel; block p of P saw
// rows_per_block(p) rows, recomputed here). Writes mean, var (biased), inv_std = 1/sqrt(var + eps),
// the forward's scale = gamma * inv_std, and updates the moving
// statistics in place: moving = momentum * moving + (1 - momentum) * batch statistic.
extern "C" __global__ void bn_finish_stats(const real* __restrict__ p_mean, const real* __restrict__ p_m2,
                                           const real* __restrict__ gamma,
                                           real* __restrict__ mean_out, real* __restrict__ inv_std_out,
                                           real* __restrict__ scale, real* __restrict__ moving_mean, real* __restrict__ moving_var,
                                           long long M, int C, int P, real momentum, real eps)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const long long per_round = (long long)P * LANES;
    real na = 0, ma = 0, qa = 0;
    for (int p = 0; p < P; ++p) {
        // rows of block p: those r = p*LANES + lane + m*per_round < M, over all lanes
        long long nb = 0;
        for (int l = 0; l < LANES; ++l) {
            const long long first = (long long)p * LANES + l;
            if (first < M) nb += (M - 1 - first) / per_round + 1;
        }
        if (nb == 0) continue;
        const real rb = (real)nb, nab = na + rb, d = p_mean[(long long)p * C + c] - ma;
        ma += d * (rb / nab);
        qa += p_m2[(long long)p * C + c] + d * d * (na * rb / nab);
        na = nab;
    }
    const real var = qa / (real)M;
    const real s = (real)1 / sqrt(var + eps);
    mean_out[c] = ma;
    inv_std_out[c] = s;
    scale[c] = gamma[c] * s;
    moving_mean[c] = momentum * moving_mean[c] + ((real)1 - momentum) * ma;
    moving_var[c] = momentum * moving_var[c] + ((real)1 - momentum) * var;
}

// out[r, c] = (use_a ? a[r, c] * ascale[c] : 0) + (b[r, c] - mean[c]) * bscale[c] + shift[c]
// forward:  use_a = 0, b = x:   y  = (x - mean) * gamma * inv_std + beta
// backward: use_a = 1, a = dy, b = x:   dx = dy * scale + (x - mean) * xcoef + shift   (bn_finish_grads)
// x - mean is formed first, so a large mean does not cancel digits away.
// A 2-D launch: grid (ceil(C / bx), rows), block (bx, by); the channel comes from the thread index
// and its coefficients are loaded once per thread.
extern "C" __global__ void bn_apply(const real* __restrict__ a, const real* __restrict__ b,
                                    const real* __restrict__ mean, const real* __restrict__ ascale,
                                    const real* __restrict__ bscale, const real* __restrict__ shift,
                                    real* __restrict__ out, long long M, int C, int use_a)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const real mu = mean[c], bs = bscale[c], sh = shift[c], as = use_a ? ascale[c] : (real)0;
    for (long long r = (long long)blockIdx.y * blockDim.y + threadIdx.y; r < M;
         r += (long long)gridDim.y * blockDim.y) {
        const long long i = r * C + c;
        real v = (b[i] - mu) * bs + sh;
        if (use_a) v += a[i] * as;
        out[i] = v;
    }
}

// partial sums of dy (-> dbeta) and of dy * (x - mean) (-> dgamma / inv_std), per channel
extern "C" __global__ void bn_partial_grads(const real* __restrict__ dy, const real* __restrict__ x,
                                            const real* __restrict__ mean, real* __restrict__ p_dy,
                                            real* __restrict__ p_dyxc, long long M, int C)
{
    __shared__ real s1[LANES][32], s2[LANES][32];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const long long stride = (long long)gridDim.y * LANES;
    real a1 = 0, a2 = 0;
    if (c < C) {
        const real mu = mean[c];
        for (long long r = (long long)blockIdx.y * LANES + threadIdx.y; r < M; r += stride) {
            const real g = dy[r * C + c];
            a1 += g;
            a2 += g * (x[r * C + c] - mu);
        }
    }
    s1[threadIdx.y][threadIdx.x] = a1;
    s2[threadIdx.y][threadIdx.x] = a2;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        real t1 = 0, t2 = 0;
#pragma unroll
        for (int l = 0; l < LANES; ++l) { t1 += s1[l][threadIdx.x]; t2 += s2[l][threadIdx.x]; }
        p_dy[(long long)blockIdx.y * C + c] = t1;
        p_dyxc[(long long)blockIdx.y * C + c] = t2;
    }
}

// dbeta = sum dy, dgamma = inv_std * sum dy (x - mean), and dx = dy * scale + (x - mean) * xcoef + shift with
//   scale = gamma * inv_std,  xcoef = -scale * dgamma * inv_std / M,  shift = -scale * dbeta / M
// which is dx = gamma * inv_std * (dy - dbeta / M - xhat * dgamma / M) rearranged, xhat = (x - mean) * inv_std.
extern "C" __global__ void bn_finish_grads(const real* __restrict__ p_dy, const real* __restrict__ p_dyxc,
                                           const real* __restrict__ inv_std, const real* __restrict__ gamma,
                                           real* __restrict__ dgamma, real* __restrict__ dbeta,
                                           real* __restrict__ scale, real* __restrict__ xcoef,
                                           real* __restrict__ shift, long long M, int C, int P)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    real sdy = 0, sdyxc = 0;
    for (int p = 0; p < P; ++p) {
        sdy += p_dy[(long long)p * C + c];
        sdyxc += p_dyxc[(long long)p * C + c];
    }
    const real s = inv_std[c], dg = sdyxc * s, sc = gamma[c] * s, xc = -sc * dg * s / (real)M;
    dbeta[c] = sdy;
    dgamma[c] = dg;
    scale[c] = sc;
    xcoef[c] = xc;
    shift[c] = -sc * sdy / (real)M;
}
