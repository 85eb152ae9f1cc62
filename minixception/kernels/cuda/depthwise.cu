// Depthwise 2-D convolution, NHWC, Keras kernel layout (KH, KW, C, 1) -- hand-written CUDA.
// Compiled by CuPy (NVRTC) with -DMX_T=float|double and the compile-time constants
// -DKH -DKW (kernel size) -DSH -DSW (stride): the tap loops unroll, the taps of one channel
// sit in registers, and "% SH" / "/ SH" are divisions by a constant (a shift for 2, nothing for 1).
// Reference: minixception/functional/depthwise.py (the xp version); the tests prove them equal.
//
// Thread layout (a 3-D launch, no "idx % C"): threadIdx.x / blockIdx.x walk the channels,
// the fastest axis of NHWC, so neighbouring threads touch neighbouring addresses (coalesced);
// threadIdx.y / blockIdx.y walk the output columns; blockIdx.z walks the (image, row) pairs
// with a grid-stride loop, so one row division per row is the only run-time division left.

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
#ifndef SH
#define SH 1
#endif
#ifndef SW
#define SW 1
#endif

// y[n, oh, ow, c] = sum_{i,j} x[n, oh*SH - PT + i, ow*SW - PL + j, c] * k[i, j, c]   (zero outside)
// grid (ceil(C / bx), ceil(OW / by), rows), block (bx, by)
extern "C" __global__ void dw_forward(const real* __restrict__ x, const real* __restrict__ k, real* __restrict__ y,
                                      int N, int H, int W, int C, int OH, int OW, int PT, int PL)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int ow = blockIdx.y * blockDim.y + threadIdx.y;
    if (c >= C || ow >= OW) return;
    real tap[KH * KW];                         // this channel's filter, read once
#pragma unroll
    for (int t = 0; t < KH * KW; ++t) tap[t] = k[t * C + c];
    const int w0 = ow * SW - PL;
    for (int row = blockIdx.z; row < N * OH; row += gridDim.z) {
        const int n = row / OH, oh = row - n * OH;
        const int h0 = oh * SH - PT;
        real acc = 0;
#pragma unroll
        for (int i = 0; i < KH; ++i) {
            const int h = h0 + i;
            if (h < 0 || h >= H) continue;
#pragma unroll
            for (int j = 0; j < KW; ++j) {
                const int w = w0 + j;
                if (w < 0 || w >= W) continue;
                acc += x[(((long long)n * H + h) * W + w) * C + c] * tap[i * KW + j];
            }
        }
        y[((long long)row * OW + ow) * C + c] = acc;
    }
}

// dx[n, h, w, c] = sum over the taps (i, j) whose output (oh, ow) saw input (h, w):
//   h + PT - i = oh * SH,  w + PL - j = ow * SW   ->  dy[n, oh, ow, c] * k[i, j, c]
// a gather (one thread per input element): no atomics, deterministic.
// grid (ceil(C / bx), ceil(W / by), rows), block (bx, by)
extern "C" __global__ void dw_backward_input(const real* __restrict__ dy, const real* __restrict__ k,
                                             real* __restrict__ dx,
                                             int N, int H, int W, int C, int OH, int OW, int PT, int PL)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int w = blockIdx.y * blockDim.y + threadIdx.y;
    if (c >= C || w >= W) return;
    real tap[KH * KW];
#pragma unroll
    for (int t = 0; t < KH * KW; ++t) tap[t] = k[t * C + c];
    for (int row = blockIdx.z; row < N * H; row += gridDim.z) {
        const int n = row / H, h = row - n * H;
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
                acc += dy[(((long long)n * OH + oh) * OW + ow) * C + c] * tap[i * KW + j];
            }
        }
        dx[((long long)row * W + w) * C + c] = acc;
    }
}

// dk[i, j, c] = sum_{n, oh, ow} x[n, oh*SH - PT + i, ow*SW - PL + j, c] * dy[n, oh, ow, c]
// A reduction over the N*OH*OW output pixels for each of the KH*KW*C weights.
// Block (32, LANES): threadIdx.x = channel within a tile of 32, threadIdx.y = lane.
// Grid (ceil(C/32), P): block row blockIdx.y takes the output rows (n, oh) numbered
// r = blockIdx.y*LANES + lane + m*P*LANES and every column of each. Each thread keeps KH*KW sums
// in registers; the LANES lanes are summed in shared memory and partial[blockIdx.y, tap, c]
// written; the host side sums the P partials (one small reduction).
#ifndef LANES
#define LANES 8      // must match LANES in minixception/kernels/cuda/depthwise.py
#endif
extern "C" __global__ void dw_backward_kernel(const real* __restrict__ x, const real* __restrict__ dy,
                                              real* __restrict__ partial,
                                              int N, int H, int W, int C, int OH, int OW, int PT, int PL)
{
    __shared__ real sm[LANES][32];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int stride = gridDim.y * LANES;
    real acc[KH * KW];
#pragma unroll
    for (int t = 0; t < KH * KW; ++t) acc[t] = 0;
    if (c < C) {
        for (int row = blockIdx.y * LANES + threadIdx.y; row < N * OH; row += stride) {
            const int n = row / OH, oh = row - n * OH;
            const int h0 = oh * SH - PT;
            for (int ow = 0; ow < OW; ++ow) {
                const real g = dy[((long long)row * OW + ow) * C + c];
                const int w0 = ow * SW - PL;
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
