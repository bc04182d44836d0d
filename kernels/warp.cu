// Bilinear backward warp of feature maps (Deep Feature Flow propagation), fp32 and fp16, NCHW and NHWC.
//
// Semantics (identical to MXNet BilinearSampler as used by DFF and to
// torch.nn.functional.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=True)):
//   out[n, c, y, x] = sum over the 4 taps (ix, iy) around (x + d[n,0,y,x], y + d[n,1,y,x]) of
//                     w(ix, iy) * in[n, c, iy, ix], with every out-of-bounds tap contributing zero.
// Displacements are float32 (N, 2, H, W), channel 0 = x, channel 1 = y, in feature pixels.
// All arithmetic is fp32; fp16 tensors are converted on load and rounded once on store.
//
// The integer part of the sample position is floor(d) + pixel and the fractional part is d - floor(d),
// both exact in fp32, so the kernels are at least as accurate as grid_sample's normalise/unnormalise path.
//
// Every symbol is extern "C" so that the loader can find it by its plain name.

#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

// The per-pixel bodies are __host__ __device__ so that tests/kernels/host_harness.cu can run exactly this index and
// tap arithmetic on a CPU (no GPU on the build machines); only the thread-to-work mapping is device-only.
#define DEQ_HD __host__ __device__ __forceinline__
#if defined(__CUDA_ARCH__)
#define DEQ_LDG(p) __ldg(p)
#else
#define DEQ_LDG(p) (*(p))
#endif

namespace {

DEQ_HD float to_f32(float v) { return v; }
DEQ_HD float to_f32(__half v) { return __half2float(v); }
template <typename T>
DEQ_HD T from_f32(float v);
template <>
DEQ_HD float from_f32<float>(float v) {
  return v;
}
template <>
DEQ_HD __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}

// V consecutive elements moved with one aligned vector load/store (16 bytes at most).
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T val[V];
};

// One vector of V elements to/from V floats. The generic path indexes the struct's elements; for 8 halves it
// unpacks the four 32-bit words of one 16-byte load by bit operations instead: indexing __half members of a
// loaded struct made ptxas keep the vector in local memory (16 bytes of stack per thread at sm_90).
DEQ_HD __half half_from_bits(unsigned int bits) {
  __half_raw r;
  r.x = (unsigned short)bits;
  return __half(r);
}
DEQ_HD unsigned int half_bits(__half h) { return (unsigned int)__half_raw(h).x; }

template <typename T, int V>
struct VecIO {
  static DEQ_HD void load(const Vec<T, V>* p, float (&f)[V]) {
    const Vec<T, V> v = *p;
#pragma unroll
    for (int e = 0; e < V; ++e) f[e] = to_f32(v.val[e]);
  }
  static DEQ_HD void store(Vec<T, V>* p, const float (&f)[V]) {
    Vec<T, V> v;
#pragma unroll
    for (int e = 0; e < V; ++e) v.val[e] = from_f32<T>(f[e]);
    *p = v;
  }
};

template <>
struct VecIO<__half, 8> {
  static DEQ_HD void load(const Vec<__half, 8>* p, float (&f)[8]) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __half2float(half_from_bits(w[i] & 0xffffu));
      f[2 * i + 1] = __half2float(half_from_bits(w[i] >> 16));
    }
  }
  static DEQ_HD void store(Vec<__half, 8>* p, const float (&f)[8]) {
    unsigned int w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = half_bits(__float2half_rn(f[2 * i])) | (half_bits(__float2half_rn(f[2 * i + 1])) << 16);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  }
};

// The four bilinear taps of one output pixel: element offsets of the taps inside one (n, c) plane (NCHW)
// or pixel indices inside one image (NHWC), and their weights. Invalid taps get weight 0 and offset 0 so
// that no load ever leaves the tensor; `valid` says which taps exist (grid_sample multiplies valid taps
// even when their weight is 0, and skips invalid ones; we do the same).
struct Taps {
  int off[4];
  float wt[4];
  bool valid[4];
};

// Compute the taps of pixel (x, y) displaced by (dx, dy) in an H x W image.
DEQ_HD Taps make_taps(int x, int y, float dx, float dy, int H, int W) {
  // Clamp so that the float -> int conversion is defined for absurd displacements; any clamped position
  // is at least two pixels outside the image, where all taps are invalid anyway.
  dx = fminf(fmaxf(dx, -(float)W - 2.0f), (float)W + 2.0f);
  dy = fminf(fmaxf(dy, -(float)H - 2.0f), (float)H + 2.0f);
  const float fdx = floorf(dx);
  const float fdy = floorf(dy);
  const float ax = dx - fdx;  // exact
  const float ay = dy - fdy;
  const int x0 = x + (int)fdx;
  const int y0 = y + (int)fdy;
  const int x1 = x0 + 1;
  const int y1 = y0 + 1;
  const bool vx0 = (x0 >= 0) && (x0 < W);
  const bool vx1 = (x1 >= 0) && (x1 < W);
  const bool vy0 = (y0 >= 0) && (y0 < H);
  const bool vy1 = (y1 >= 0) && (y1 < H);
  Taps t;
  t.valid[0] = vx0 && vy0;
  t.valid[1] = vx1 && vy0;
  t.valid[2] = vx0 && vy1;
  t.valid[3] = vx1 && vy1;
  t.wt[0] = (1.0f - ax) * (1.0f - ay);
  t.wt[1] = ax * (1.0f - ay);
  t.wt[2] = (1.0f - ax) * ay;
  t.wt[3] = ax * ay;
  // Offsets only of taps inside the plane, so they are < H * W < 2^31 (the launcher refuses larger planes);
  // y0 * W of a tap far outside could overflow int for planes above 2^30 elements.
  t.off[0] = t.valid[0] ? y0 * W + x0 : 0;
  t.off[1] = t.valid[1] ? y0 * W + x1 : 0;
  t.off[2] = t.valid[2] ? y1 * W + x0 : 0;
  t.off[3] = t.valid[3] ? y1 * W + x1 : 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (!t.valid[k]) t.wt[k] = 0.0f;
  }
  return t;
}

// Taps of output pixel p = y * W + x of image n, reading the displacement field (N, 2, H, W).
DEQ_HD Taps pixel_taps(const float* __restrict__ disp, int n, int p, int H, int W) {
  const int64_t hw = (int64_t)H * W;
  const float* d = disp + (int64_t)n * 2 * hw + p;
  const float dx = DEQ_LDG(d);
  const float dy = DEQ_LDG(d + hw);
  return make_taps(p % W, p / W, dx, dy, H, W);
}

// ---------------------------------------------------------------------------------------------------------
// NCHW: one thread per output pixel and chunk of `cpt` channels (cpt = 1 is one thread per element).
// Consecutive threads own consecutive pixels of the same channel, so loads and stores coalesce.
// grid = (ceil(H*W / blockDim.x), ceil(C / cpt), N).
// mode: 0 = warp only (b, db unused), 1 = weighted sum wa*A + wb*B, 2 = max(A, B). `scale` may be null.
// ---------------------------------------------------------------------------------------------------------
// Work of one thread: pixel p of image n, channels [chunk * cpt, chunk * cpt + cpt).
// In-plane indices (p, hw, tap offsets) are int: the launcher refuses planes of H * W >= 2^31 elements; every
// offset across planes or images is int64.
template <typename T>
DEQ_HD void nchw_item(const T* __restrict__ a, const float* __restrict__ da, const T* __restrict__ b,
                      const float* __restrict__ db, const T* __restrict__ scale, T* __restrict__ out, int C, int H,
                      int W, int cpt, float wa, float wb, int mode, int n, int p, int chunk) {
  const int hw = H * W;
  const int c_begin = chunk * cpt;
  const int c_end = (C < c_begin + cpt) ? C : c_begin + cpt;
  const Taps ta = pixel_taps(da, n, p, H, W);
  Taps tb = ta;
  if (mode != 0) tb = pixel_taps(db, n, p, H, W);
  for (int c = c_begin; c < c_end; ++c) {
    const int64_t plane = ((int64_t)n * C + c) * hw;
    const T* pa = a + plane;
    float va = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (ta.valid[k]) va += ta.wt[k] * to_f32(pa[ta.off[k]]);
    }
    float r = va;
    if (mode != 0) {
      const T* pb = b + plane;
      float vb = 0.0f;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (tb.valid[k]) vb += tb.wt[k] * to_f32(pb[tb.off[k]]);
      }
      r = (mode == 2) ? fmaxf(va, vb) : wa * va + wb * vb;
    }
    if (scale != nullptr) r *= to_f32(scale[plane + p]);
    out[plane + p] = from_f32<T>(r);
  }
}

// ---------------------------------------------------------------------------------------------------------
// NHWC (channels-last): one warp (32 lanes) per output pixel; the lanes stride over the channels in vectors of
// V elements, so each tap is one contiguous, coalesced C-element read. Requires C % V == 0 and every pointer
// aligned to sizeof(T) * V (the loader checks). Grid-stride over pixels; blockDim.x must be a multiple of 32.
// ---------------------------------------------------------------------------------------------------------
// Work of one lane: its channel vectors (lane, lane + 32, ...) of global pixel q = n * H * W + p.
template <typename T, int V>
DEQ_HD void nhwc_item(const T* __restrict__ a, const float* __restrict__ da, const T* __restrict__ b,
                      const float* __restrict__ db, const T* __restrict__ scale, T* __restrict__ out, int C, int H,
                      int W, float wa, float wb, int mode, int64_t q, int lane) {
  using VT = Vec<T, V>;
  const int64_t hw = (int64_t)H * W;
  const int cv = C / V;  // vectors per pixel
  const int n = (int)(q / hw);
  const int p = (int)(q - (int64_t)n * hw);
  const Taps ta = pixel_taps(da, n, p, H, W);
  Taps tb = ta;
  if (mode != 0) tb = pixel_taps(db, n, p, H, W);
  const int64_t img = (int64_t)n * hw;  // first pixel of image n
  const VT* va_base = reinterpret_cast<const VT*>(a);
  const VT* vb_base = reinterpret_cast<const VT*>(b);
  for (int j = lane; j < cv; j += 32) {
    float acc_a[V];
    float acc_b[V];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      acc_a[e] = 0.0f;
      acc_b[e] = 0.0f;
    }
    float v[V];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (ta.valid[k]) {  // uniform across the warp: no divergence
        VecIO<T, V>::load(va_base + (img + ta.off[k]) * cv + j, v);
#pragma unroll
        for (int e = 0; e < V; ++e) acc_a[e] += ta.wt[k] * v[e];
      }
    }
    if (mode != 0) {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (tb.valid[k]) {
          VecIO<T, V>::load(vb_base + (img + tb.off[k]) * cv + j, v);
#pragma unroll
          for (int e = 0; e < V; ++e) acc_b[e] += tb.wt[k] * v[e];
        }
      }
    }
    const int64_t o = (q * cv + j);
    float s[V];
    if (scale != nullptr) VecIO<T, V>::load(reinterpret_cast<const VT*>(scale) + o, s);
    float r[V];
#pragma unroll
    for (int e = 0; e < V; ++e) {
      float x = acc_a[e];
      if (mode == 1) x = wa * acc_a[e] + wb * acc_b[e];
      if (mode == 2) x = fmaxf(acc_a[e], acc_b[e]);
      if (scale != nullptr) x *= s[e];
      r[e] = x;
    }
    VecIO<T, V>::store(reinterpret_cast<VT*>(out) + o, r);
  }
}

// NCHW thread mapping: grid = (ceil(H*W / blockDim.x), ceil(C / cpt), N).
template <typename T>
__device__ __forceinline__ void nchw_body(const T* __restrict__ a, const float* __restrict__ da,
                                          const T* __restrict__ b, const float* __restrict__ db,
                                          const T* __restrict__ scale, T* __restrict__ out, int C, int H, int W,
                                          int cpt, float wa, float wb, int mode) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= H * W) return;
  nchw_item<T>(a, da, b, db, scale, out, C, H, W, cpt, wa, wb, mode, blockIdx.z, p, blockIdx.y);
}

// NHWC thread mapping: one warp per pixel, grid-stride over the N*H*W pixels.
template <typename T, int V>
__device__ __forceinline__ void nhwc_body(const T* __restrict__ a, const float* __restrict__ da,
                                          const T* __restrict__ b, const float* __restrict__ db,
                                          const T* __restrict__ scale, T* __restrict__ out, int N, int C, int H,
                                          int W, float wa, float wb, int mode) {
  const int lane = threadIdx.x & 31;
  const int warps_per_block = blockDim.x >> 5;
  const int64_t total = (int64_t)N * H * W;
  for (int64_t q = (int64_t)blockIdx.x * warps_per_block + (threadIdx.x >> 5); q < total;
       q += (int64_t)gridDim.x * warps_per_block) {
    nhwc_item<T, V>(a, da, b, db, scale, out, C, H, W, wa, wb, mode, q, lane);
  }
}

}  // namespace

// ------------------------------------------------ entry points ------------------------------------------------
// warp_*:   out = warp(in, disp) [* scale]            (scale may be a null pointer)
// interp_*: out = fuse(warp(a, da), warp(b, db)), mode 1 = wa*A + wb*B, mode 2 = max(A, B)

#define DEQ_NCHW_ENTRIES(T, SUFFIX)                                                                              \
  extern "C" __global__ void __launch_bounds__(256)                                                           \
      warp_nchw_##SUFFIX(const T* __restrict__ in, const float* __restrict__ disp, const T* __restrict__ scale, \
                         T* __restrict__ out, int N, int C, int H, int W, int cpt) {                           \
    (void)N;                                                                                                   \
    nchw_body<T>(in, disp, in, disp, scale, out, C, H, W, cpt, 1.0f, 0.0f, 0);                                 \
  }                                                                                                            \
  extern "C" __global__ void __launch_bounds__(256)                                                           \
      interp_nchw_##SUFFIX(const T* __restrict__ a, const float* __restrict__ da, const T* __restrict__ b,       \
                           const float* __restrict__ db, T* __restrict__ out, int N, int C, int H, int W,       \
                           int cpt, float wa, float wb, int mode) {                                            \
    (void)N;                                                                                                   \
    nchw_body<T>(a, da, b, db, nullptr, out, C, H, W, cpt, wa, wb, mode);                                      \
  }

// BOUNDS: the interp kernels' launch bounds. interp_nhwc_f16_v8 holds two sets of 8 accumulators plus two tap
// sets; with plain __launch_bounds__(256) ptxas spilled 16 bytes of stack at 64 registers on sm_75..sm_90, with a
// minimum of 4 blocks per SM (the same 64-register budget) it allocates them without any spill.
#define DEQ_BOUNDS_DEFAULT __launch_bounds__(256)
#define DEQ_BOUNDS_4_BLOCKS __launch_bounds__(256, 4)
#define DEQ_NHWC_ENTRIES(T, SUFFIX, V, BOUNDS)                                                                   \
  extern "C" __global__ void __launch_bounds__(256)                                                           \
      warp_nhwc_##SUFFIX##_v##V(const T* __restrict__ in, const float* __restrict__ disp,                       \
                                const T* __restrict__ scale, T* __restrict__ out, int N, int C, int H, int W) { \
    nhwc_body<T, V>(in, disp, in, disp, scale, out, N, C, H, W, 1.0f, 0.0f, 0);                                \
  }                                                                                                            \
  extern "C" __global__ void BOUNDS                                                                            \
      interp_nhwc_##SUFFIX##_v##V(const T* __restrict__ a, const float* __restrict__ da, const T* __restrict__ b, \
                                  const float* __restrict__ db, T* __restrict__ out, int N, int C, int H, int W, \
                                  float wa, float wb, int mode) {                                              \
    nhwc_body<T, V>(a, da, b, db, nullptr, out, N, C, H, W, wa, wb, mode);                                     \
  }

DEQ_NCHW_ENTRIES(float, f32)
DEQ_NCHW_ENTRIES(__half, f16)
DEQ_NHWC_ENTRIES(float, f32, 1, DEQ_BOUNDS_DEFAULT)
DEQ_NHWC_ENTRIES(float, f32, 4, DEQ_BOUNDS_DEFAULT)
DEQ_NHWC_ENTRIES(__half, f16, 1, DEQ_BOUNDS_DEFAULT)
DEQ_NHWC_ENTRIES(__half, f16, 8, DEQ_BOUNDS_4_BLOCKS)
