#include "fingerprint.h"

#include <cstring>

#include "cpu_clones.h"

namespace genkern::cpu {
namespace {

constexpr int kLanes = 8;
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;  // 2^64 / golden ratio (odd)
constexpr uint64_t kKeys[kLanes] = {0x243F6A8885A308D3ull, 0x13198A2E03707344ull,
                                    0xA4093822299F31D0ull, 0x082EFA98EC4E6C89ull,
                                    0x452821E638D01377ull, 0xBE5466CF34E90C6Cull,
                                    0xC0AC29B7C97C50DDull, 0x3F84D5B5B5470917ull};  // pi's bits

// acc[k] += lo32(d) * hi32(d) + v for each word v of lane k, d = v ^ (key_k + stripe * kGolden):
// the products make the sum depend on where each word is, the plain v on all of its bits. The
// 32 x 32 -> 64 multiply is one vpmuludq per 8 (AVX-512) or 4 (AVX2) words.
GK_CPU_CLONES void accumulate(const uint64_t* __restrict__ w, int64_t stripes,
                              uint64_t* __restrict__ acc) {
  uint64_t a[kLanes];
  for (int k = 0; k < kLanes; ++k) a[k] = acc[k];
  for (int64_t s = 0; s < stripes; ++s) {
    const uint64_t salt = static_cast<uint64_t>(s) * kGolden;
    for (int k = 0; k < kLanes; ++k) {
      const uint64_t v = w[s * kLanes + k];
      const uint64_t d = v ^ (kKeys[k] + salt);
      a[k] += (d & 0xFFFFFFFFull) * (d >> 32) + v;
    }
  }
  for (int k = 0; k < kLanes; ++k) acc[k] = a[k];
}

uint64_t mix(uint64_t h) {  // a 64-bit finalizer (murmur3's fmix64)
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 33;
  h *= 0xC4CEB9FE1A85EC53ull;
  return h ^ (h >> 33);
}

}  // namespace

uint64_t fingerprint(const at::Tensor& t) {
  // the words straight from t where they can be (dense, 8-byte aligned: allocators align), else
  // from a copy
  const bool direct = t.is_non_overlapping_and_dense() &&
                      reinterpret_cast<uintptr_t>(t.const_data_ptr()) % alignof(uint64_t) == 0;
  const at::Tensor d = direct ? t : t.clone(at::MemoryFormat::Contiguous);
  const auto* bytes = static_cast<const unsigned char*>(d.const_data_ptr());
  const int64_t n = d.numel() * static_cast<int64_t>(d.element_size());
  constexpr int64_t kStripe = kLanes * sizeof(uint64_t);
  const int64_t stripes = n / kStripe;
  uint64_t acc[kLanes];
  for (int k = 0; k < kLanes; ++k) acc[k] = kKeys[k];
  accumulate(reinterpret_cast<const uint64_t*>(bytes), stripes, acc);
  uint64_t tail[kLanes] = {};
  std::memcpy(tail, bytes + stripes * kStripe, static_cast<size_t>(n - stripes * kStripe));
  uint64_t h = static_cast<uint64_t>(n) * kGolden;
  for (int k = 0; k < kLanes; ++k) h = mix(h ^ acc[k] ^ mix(tail[k] + kKeys[k]));
  return h;
}

}  // namespace genkern::cpu
