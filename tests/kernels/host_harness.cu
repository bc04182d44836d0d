// CPU harness for kernels/warp.cu: runs the kernels' per-thread bodies (nchw_item / nhwc_item) over every
// (image, channel chunk, pixel) or (pixel, lane) on the host, so the index, tap, vector and fp16 arithmetic of the
// real kernel source is checked on machines without a GPU. Only the thread-to-work mapping is not exercised.
//
// usage: host_harness DIR LAYOUT(nchw|nhwc) DTYPE(f32|f16) V MODE(0|1|2) HAS_SCALE N C H W CPT WA WB
// reads DIR/{a,da,b,db,scale}.bin (raw little-endian arrays in the kernel's memory layout), writes DIR/out.bin.

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "warp.cu"

static std::vector<char> read_file(const std::string& path) {
  std::vector<char> buf;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return buf;
  std::fseek(f, 0, SEEK_END);
  long size = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  buf.resize(size);
  if (size > 0 && std::fread(buf.data(), 1, size, f) != (size_t)size) buf.clear();
  std::fclose(f);
  return buf;
}

template <typename T, int V>
static void run(const std::string& dir, const std::string& layout, int mode, bool has_scale, int N, int C, int H,
                int W, int cpt, float wa, float wb) {
  std::vector<char> a = read_file(dir + "/a.bin"), da = read_file(dir + "/da.bin");
  std::vector<char> b = read_file(dir + "/b.bin"), db = read_file(dir + "/db.bin");
  std::vector<char> sc = read_file(dir + "/scale.bin");
  std::vector<char> out((size_t)N * C * H * W * sizeof(T));
  const T* pa = reinterpret_cast<const T*>(a.data());
  const float* pda = reinterpret_cast<const float*>(da.data());
  const T* pb = mode ? reinterpret_cast<const T*>(b.data()) : pa;
  const float* pdb = mode ? reinterpret_cast<const float*>(db.data()) : pda;
  const T* ps = has_scale ? reinterpret_cast<const T*>(sc.data()) : nullptr;
  T* po = reinterpret_cast<T*>(out.data());
  if (layout == "nchw") {
    const int chunks = (C + cpt - 1) / cpt;
    for (int n = 0; n < N; ++n)
      for (int chunk = 0; chunk < chunks; ++chunk)
        for (int p = 0; p < H * W; ++p) nchw_item<T>(pa, pda, pb, pdb, ps, po, C, H, W, cpt, wa, wb, mode, n, p, chunk);
  } else {
    for (int64_t q = 0; q < (int64_t)N * H * W; ++q)
      for (int lane = 0; lane < 32; ++lane) nhwc_item<T, V>(pa, pda, pb, pdb, ps, po, C, H, W, wa, wb, mode, q, lane);
  }
  FILE* f = std::fopen((dir + "/out.bin").c_str(), "wb");
  std::fwrite(out.data(), 1, out.size(), f);
  std::fclose(f);
}

int main(int argc, char** argv) {
  if (argc != 14) {
    std::fprintf(stderr, "usage: %s DIR LAYOUT DTYPE V MODE HAS_SCALE N C H W CPT WA WB\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1], layout = argv[2], dtype = argv[3];
  const int v = std::atoi(argv[4]), mode = std::atoi(argv[5]);
  const bool has_scale = std::atoi(argv[6]) != 0;
  const int N = std::atoi(argv[7]), C = std::atoi(argv[8]), H = std::atoi(argv[9]), W = std::atoi(argv[10]);
  const int cpt = std::atoi(argv[11]);
  const float wa = (float)std::atof(argv[12]), wb = (float)std::atof(argv[13]);
  if (dtype == "f32" && v == 1) run<float, 1>(dir, layout, mode, has_scale, N, C, H, W, cpt, wa, wb);
  else if (dtype == "f32" && v == 4) run<float, 4>(dir, layout, mode, has_scale, N, C, H, W, cpt, wa, wb);
  else if (dtype == "f16" && v == 1) run<__half, 1>(dir, layout, mode, has_scale, N, C, H, W, cpt, wa, wb);
  else if (dtype == "f16" && v == 8) run<__half, 8>(dir, layout, mode, has_scale, N, C, H, W, cpt, wa, wb);
  else {
    std::fprintf(stderr, "unsupported dtype/vector width %s/%d\n", dtype.c_str(), v);
    return 2;
  }
  return 0;
}
