// Depthwise 2-D convolution, NHWC, Keras kernel layout (KH, KW, C, 1) -- hand-written CUDA.
// Compiled by CuPy (NVRTC) with -DMX_T=float|double -DKH=<kh> -DKW=<kw>, so the tap loops unroll
// and the per-tap accumulators of the kernel gradient live in registers.
// Reference and fallback: minixception/functional/depthwise.py (the xp version).
//
// Thread layout: channels are the fastest axis in NHWC, so consecutive threads take
// consecutive channels and every global load/store is coalesced.

#ifndef MX_T
#define MX_T float
#endif
typedef MX_T real;   // the scalar type (a macro named T would clash with the CUDA headers under nvcc)
#ifndef KH
#define KH 3
#endif
#ifndef KW
#define KW 3
#endif

// y[n, oh, ow, c] = sum_{i,j} x[n, oh*SH - PT + i, ow*SW - PL + j, c] * k[i, j, c]   (zero outside)
// one thread per output element, grid-stride loop
extern "C" __global__ void dw_forward(const real* __restrict__ x, const real* __restrict__ k, real* __restrict__ y,
                                      int N, int H, int W, int C, int OH, int OW,
                                      int SH, int SW, int PT, int PL)
{
    const long long total = (long long)N * OH * OW * C;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)blockDim.x * gridDim.x) {
        const int c = (int)(idx % C);
        long long t = idx / C;
        const int ow = (int)(t % OW);
        t /= OW;
        const int oh = (int)(t % OH);
        const int n = (int)(t / OH);
        const int h0 = oh * SH - PT, w0 = ow * SW - PL;
        real acc = 0;
#pragma unroll
        for (int i = 0; i < KH; ++i) {
            const int h = h0 + i;
            if (h < 0 || h >= H) continue;
#pragma unroll
            for (int j = 0; j < KW; ++j) {
                const int w = w0 + j;
                if (w < 0 || w >= W) continue;
                acc += x[(((long long)n * H + h) * W + w) * C + c] * k[(i * KW + j) * C + c];
            }
        }
        y[idx] = acc;
    }
}

// dx[n, h, w, c] = sum over the taps (i, j) whose output (oh, ow) saw input (h, w):
//   h + PT - i = oh * SH,  w + PL - j = ow * SW   ->  dy[n, oh, ow, c] * k[i, j, c]
// a gather (one thread per input element): no atomics, deterministic.
extern "C" __global__ void dw_backward_input(const real* __restrict__ dy, const real* __restrict__ k,
                                             real* __restrict__ dx,
                                             int N, int H, int W, int C, int OH, int OW,
                                             int SH, int SW, int PT, int PL)
{
    const long long total = (long long)N * H * W * C;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)blockDim.x * gridDim.x) {
        const int c = (int)(idx % C);
        long long t = idx / C;
        const int w = (int)(t % W);
        t /= W;
        const int h = (int)(t % H);
        const int n = (int)(t / H);
        real acc = 0;
#pragma unroll
        for (int i = 0; i < KH; ++i) {
            const int hp = h + PT - i;
            if (hp < 0 || hp % SH) continue;
            const int oh = hp / SH;
            if (oh >= OH) continue;
#pragma unroll
            for (int j = 0; j < KW; ++j) {
                const int wp = w + PL - j;
                if (wp < 0 || wp % SW) continue;
                const int ow = wp / SW;
                if (ow >= OW) continue;
                acc += dy[(((long long)n * OH + oh) * OW + ow) * C + c] * k[(i * KW + j) * C + c];
            }
        }
        dx[idx] = acc;
    }
}

// dk[i, j, c] = sum_{n, oh, ow} x[n, oh*SH - PT + i, ow*SW - PL + j, c] * dy[n, oh, ow, c]
// A reduction over the M = N*OH*OW output pixels for each of the KH*KW*C weights.
// Block (32, LANES): threadIdx.x = channel within a tile of 32, threadIdx.y = lane.
// Grid (ceil(C/32), P): block row blockIdx.y takes pixels p = blockIdx.y*LANES + lane + r*P*LANES.
// Each thread keeps KH*KW sums in registers; the LANES lanes are summed in shared memory and
// partial[blockIdx.y, tap, c] written; the host side sums the P partials (one small reduction).
#ifndef LANES
#define LANES 8      // must match minixception/cuda/__init__.py LANES
#endif
extern "C" __global__ void dw_backward_kernel(const real* __restrict__ x, const real* __restrict__ dy,
                                              real* __restrict__ partial,
                                              int N, int H, int W, int C, int OH, int OW,
                                              int SH, int SW, int PT, int PL)
{
    __shared__ real sm[LANES][32];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const long long M = (long long)N * OH * OW;
    const long long stride = (long long)gridDim.y * LANES;
    real acc[KH * KW];
#pragma unroll
    for (int t = 0; t < KH * KW; ++t) acc[t] = 0;
    if (c < C) {
        for (long long p = (long long)blockIdx.y * LANES + threadIdx.y; p < M; p += stride) {
            const int ow = (int)(p % OW);
            const long long q = p / OW;
            const int oh = (int)(q % OH);
            const int n = (int)(q / OH);
            const real g = dy[p * C + c];
            const int h0 = oh * SH - PT, w0 = ow * SW - PL;
#pragma unroll
            for (int i = 0; i < KH; ++i) {
                const int h = h0 + i;
                if (h < 0 || h >= H) continue;
#pragma unroll
                for (int j = 0; j < KW; ++j) {
                    const int w = w0 + j;
                    if (w < 0 || w >= W) continue;
                    acc[i * KW + j] += x[(((long long)n * H + h) * W + w) * C + c] * g;
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < KH * KW; ++t) {
        sm[threadIdx.y][threadIdx.x] = acc[t];
        __syncthreads();
        if (threadIdx.y == 0 && c < C) {
            real s = 0;
#pragma unroll
            for (int l = 0; l < LANES; ++l) s += sm[l][threadIdx.x];
            partial[((long long)blockIdx.y * (KH * KW) + t) * C + c] = s;
        }
        __syncthreads();
    }
}
