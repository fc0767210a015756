#include "onednn_layout.h"

#include <ATen/Parallel.h>
#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <optional>

#include "conv_geometry.h"
#include "layout_copy.h"
#include "path_mode.h"

namespace genkern::cpu {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kChannelsLast = at::MemoryFormat::ChannelsLast;

// Below this many multiply-adds a call is left in ATen's layout: the copies would weigh more,
// and the first call's timing would be noise.
constexpr double kMinMacs = 1 << 23;

std::atomic<int64_t> g_mode{1};
std::atomic<int64_t> g_channels_last_calls{0};
std::mutex g_mutex;
std::map<std::vector<int64_t>, bool> g_choice;  // key -> run in channels_last
constexpr size_t kMaxChoices = 4096;            // a run of ever-new shapes: start over past this
// Per layer key: {shapes timed, how many of them chose channels_last}. Past kMaxTimedShapes a
// layer's new shapes take its majority layout untimed: an inference server whose batch and
// image sizes keep changing timed each new shape (6 calls) and ran ~3x slower than stock with
// NCHW inputs (found by a fuzz: 240 shapes 6 s, stock 2 s).
std::map<std::vector<int64_t>, std::array<int64_t, 2>> g_layer_tally;
constexpr int64_t kMaxTimedShapes = 8;
int64_t g_timings = 0;  // shapes timed since the mode was set (for tests)

struct Geometry {
  const at::Tensor& x;
  const at::Tensor& weight;
  const std::vector<int64_t>& stride;
  const std::vector<int64_t>& padding;
  const std::vector<int64_t>& dilation;
  bool transposed;
  const std::vector<int64_t>& output_padding;
  int64_t groups;

  // Plain contiguous NCHW float32 tensors, a call big enough (any in mode always), no empty
  // output position (where oneDNN crashes, conv_geometry.h).
  bool eligible(const at::Tensor& other) const {
    if (g_mode.load(std::memory_order_relaxed) == 0 || x.dim() != 4 || weight.dim() != 4 ||
        x.scalar_type() != at::kFloat || weight.scalar_type() != at::kFloat ||
        !x.is_contiguous() || !weight.is_contiguous() ||
        conv_output_format(x, weight) == kChannelsLast ||
        other.suggest_memory_format() == kChannelsLast || x.numel() == 0 || weight.numel() == 0)
      return false;
    // multiply-adds: every input pixel meets C_out / groups * kH * kW weights (either direction)
    const int64_t out_channels = transposed ? weight.size(1) * groups : weight.size(0);
    const double macs = static_cast<double>(x.numel()) * static_cast<double>(out_channels) /
                        static_cast<double>(groups) * weight.size(2) * weight.size(3);
    return (macs >= kMinMacs || g_mode.load(std::memory_order_relaxed) == 2) &&
           !has_empty_output(transposed, x, weight, stride, padding, output_padding, dilation);
  }

  // The choice's key; with of_layer, without the input's batch and pixel counts: every shape a
  // layer meets.
  std::vector<int64_t> key(int64_t direction, bool of_layer = false) const {
    std::vector<int64_t> k{direction, transposed, groups, at::get_num_threads()};
    for (const auto* v : {&stride, &padding, &dilation, &output_padding})
      k.insert(k.end(), v->begin(), v->end());
    if (of_layer)
      k.push_back(x.size(1));
    else
      k.insert(k.end(), x.sizes().begin(), x.sizes().end());
    k.insert(k.end(), weight.sizes().begin(), weight.sizes().end());
    return k;
  }
};

double seconds(const std::function<void()>& fn) {
  const auto t0 = Clock::now();
  fn();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Runs `call(channels_last)` in the layout kept for `key`, or in the faster of the two, each
// timed by its best of kRounds calls, interleaved (one call's time swings by 10-20% on these
// machines; the first call of each also makes its oneDNN primitive). channels_last is kept only
// when it wins by kMargin: a tie stays with ATen's (and stock's) layout.
constexpr int kRounds = 3;
constexpr double kMargin = 0.95;
template <typename Result>
Result run_in_chosen_layout(const std::vector<int64_t>& key, const std::vector<int64_t>& layer,
                            const std::function<Result(bool)>& call) {
  if (g_mode.load(std::memory_order_relaxed) == 2) {
    g_channels_last_calls.fetch_add(1);
    return call(true);
  }
  std::optional<bool> kept;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (const auto it = g_choice.find(key); it != g_choice.end()) kept = it->second;
    const auto t = g_layer_tally.find(layer);
    if (!kept && t != g_layer_tally.end() && t->second[0] >= kMaxTimedShapes) {
      kept = 2 * t->second[1] > t->second[0];
      if (g_choice.size() >= kMaxChoices) g_choice.clear();
      g_choice.emplace(key, *kept);
    }
  }
  if (kept) {  // run outside the lock: other threads' calls go on meanwhile
    if (*kept) g_channels_last_calls.fetch_add(1);
    return call(*kept);
  }
  Result result[2];
  double best[2] = {1e300, 1e300};
  bool cl_failed = false;  // oneDNN refused the channels_last call: ATen's layout, as stock
  for (int round = 0; round < kRounds; ++round) {
    for (int cl = 0; cl < 2 - cl_failed; ++cl) {
      const auto run = [&] {
        Result r = call(cl == 1);
        if (round == 0) result[cl] = std::move(r);
      };
      try {
        best[cl] = std::min(best[cl], seconds(run));
      } catch (const std::exception&) {
        if (cl == 0) throw;
        cl_failed = true;
      }
    }
  }
  const bool cl = !cl_failed && best[1] < kMargin * best[0];
  if (cl) g_channels_last_calls.fetch_add(1);
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_choice.size() >= kMaxChoices) g_choice.clear();
  g_choice.emplace(key, cl);
  ++g_timings;
  if (g_layer_tally.size() >= kMaxChoices) g_layer_tally.clear();
  auto& tally = g_layer_tally[layer];
  ++tally[0];
  tally[1] += cl;
  return std::move(result[cl]);
}

// A call that ATen runs in channels_last (the weight is) on a float32 NCHW input: ATen converts
// the input itself with its strided copy (and the output gradient in the backward), ours is
// 3x faster ([128, 64, 7, 7]: 143 -> 44 us). The same bits and output layouts either way.
bool runs_channels_last(const at::Tensor& x, const at::Tensor& weight) {
  return x.dim() == 4 && x.scalar_type() == at::kFloat &&
         !x.is_contiguous(at::MemoryFormat::ChannelsLast) &&
         weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

}  // namespace

void set_onednn_layout_mode(int64_t mode) {
  set_path_mode(g_mode, mode, "oneDNN layout");
  std::lock_guard<std::mutex> lock(g_mutex);
  g_choice.clear();
  g_layer_tally.clear();
  g_timings = 0;
}

int64_t onednn_layout_mode() { return g_mode.load(); }

int64_t onednn_layout_channels_last_calls() { return g_channels_last_calls.load(); }

int64_t onednn_layout_timings() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_timings;
}

int64_t onednn_layout_choices() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return static_cast<int64_t>(g_choice.size());
}

at::Tensor onednn_convolution(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias,
                              const std::vector<int64_t>& stride,
                              const std::vector<int64_t>& padding,
                              const std::vector<int64_t>& dilation, bool transposed,
                              const std::vector<int64_t>& output_padding, int64_t groups) {
  const auto aten = [&](const at::Tensor& input) {
    return at::convolution(input, weight, bias, stride, padding, dilation, transposed,
                           output_padding, groups);
  };
  if (runs_channels_last(x, weight)) return aten(to_channels_last_scratch(x, 0));
  const Geometry geo{x, weight, stride, padding, dilation, transposed, output_padding, groups};
  if (!geo.eligible(x)) return aten(x);
  return run_in_chosen_layout<at::Tensor>(geo.key(0), geo.key(0, true), [&](bool cl) {
    return cl ? to_contiguous(aten(to_channels_last_scratch(x, 0))) : aten(x);
  });
}

std::tuple<at::Tensor, at::Tensor> onednn_convolution_backward(
    const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight,
    const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
    const std::vector<int64_t>& dilation, bool transposed,
    const std::vector<int64_t>& output_padding, int64_t groups, bool need_x, bool need_w) {
  using Grads = std::tuple<at::Tensor, at::Tensor>;
  // The weight gradient, then the input gradient, in two calls: oneDNN's weight gradient holds
  // three weight-sized buffers while it runs, not beside the input gradient then (DCGAN-32's
  // 128 -> 256 conv: 8.0 -> 6.1 MB at the peak). The same bits; not slower (9.8 vs 9.8 ms).
  const auto aten = [&](const at::Tensor& gi, const at::Tensor& xi) -> Grads {
    const auto call = [&](bool x_grad, bool w_grad) {
      return at::convolution_backward(gi, xi, weight, std::nullopt, stride, padding, dilation,
                                      transposed, output_padding, groups,
                                      {x_grad, w_grad, false});
    };
    at::Tensor gw = need_w ? std::get<1>(call(false, true)) : at::Tensor();
    at::Tensor gx = need_x ? std::get<0>(call(true, false)) : at::Tensor();
    return {gx, gw};
  };
  if ((need_x || need_w) && runs_channels_last(x, weight))
    return aten(to_channels_last_scratch(g, 0), to_channels_last_scratch(x, 1));
  const Geometry geo{x, weight, stride, padding, dilation, transposed, output_padding, groups};
  if (!(need_x || need_w) || !geo.eligible(g)) return aten(g, x);
  const int64_t direction = 1 + need_x + 2 * need_w;
  return run_in_chosen_layout<Grads>(geo.key(direction), geo.key(direction, true),
                                    [&](bool cl) -> Grads {
    if (!cl) return aten(g, x);
    auto [gx, gw] = aten(to_channels_last_scratch(g, 0), to_channels_last_scratch(x, 1));
    return {need_x ? to_contiguous(gx) : gx, need_w ? to_contiguous(gw) : gw};
  });
}

}  // namespace genkern::cpu
