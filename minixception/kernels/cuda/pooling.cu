// Max pooling, NHWC, with the winning tap remembered -- hand-written CUDA.
// Compiled by CuPy (NVRTC) with -DMX_T=float|double -DKH -DKW (window) -DSH -DSW (stride).
// Reference: maxpool2d_forward / maxpool2d_backward in minixception/functional/pooling.py, whose
// cache this kernel writes in the same form: winner[n, oh, ow, c] = i * KW + j of the first
// maximum in row-major tap order (ties go to the first, as cuDNN and PyTorch do); padding never wins.
// The plain CuPy version takes about 4 launches per tap forward and 3 per tap backward; here one each.
// Thread layout as in depthwise.cu: x = channels, y = output (input) columns, z = (image, row) pairs.

#ifndef MX_T
#define MX_T float
#endif
typedef MX_T real;
#ifndef KH
#define KH 3
#endif
#ifndef KW
#define KW 3
#endif
#ifndef SH
#define SH 2
#endif
#ifndef SW
#define SW 2
#endif

extern "C" __global__ void maxpool_forward(const real* __restrict__ x, real* __restrict__ y,
                                           unsigned char* __restrict__ winner,
                                           int N, int H, int W, int C, int OH, int OW, int PT, int PL)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int ow = blockIdx.y * blockDim.y + threadIdx.y;
    if (c >= C || ow >= OW) return;
    const int w0 = ow * SW - PL;
    for (int row = blockIdx.z; row < N * OH; row += gridDim.z) {
        const int n = row / OH, oh = row - n * OH;
        const int h0 = oh * SH - PT;
        real best = 0;
        int won = -1;                                  // no real input seen yet
#pragma unroll
        for (int i = 0; i < KH; ++i) {
            const int h = h0 + i;
            if (h < 0 || h >= H) continue;
#pragma unroll
            for (int j = 0; j < KW; ++j) {
                const int w = w0 + j;
                if (w < 0 || w >= W) continue;
                const real v = x[(((long long)n * H + h) * W + w) * C + c];
                if (won < 0 || v > best) { best = v; won = i * KW + j; }   // strict: first maximum kept
            }
        }
        const long long o = ((long long)row * OW + ow) * C + c;
        y[o] = best;
        winner[o] = (unsigned char)won;
    }
}

// dx[n, h, w, c] = sum of dy[n, oh, ow, c] over the outputs whose winning tap was (h, w):
// a gather over the taps that can see (h, w), one thread per input element, no atomics.
extern "C" __global__ void maxpool_backward(const real* __restrict__ dy, const unsigned char* __restrict__ winner,
                                            real* __restrict__ dx,
                                            int N, int H, int W, int C, int OH, int OW, int PT, int PL)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int w = blockIdx.y * blockDim.y + threadIdx.y;
    if (c >= C || w >= W) return;
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
                const long long o = (((long long)n * OH + oh) * OW + ow) * C + c;
                if (winner[o] == i * KW + j) acc += dy[o];
            }
        }
        dx[((long long)row * W + w) * C + c] = acc;
    }
}
