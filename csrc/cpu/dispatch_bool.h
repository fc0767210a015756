// dispatch_bool: a runtime bool as a compile-time one, for loops specialized on it.
#pragma once

#include <type_traits>

namespace genkern::cpu {

// Calls f(std::integral_constant<bool, b>{}) for the runtime bool b.
template <typename F>
void dispatch_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

}  // namespace genkern::cpu
