// GK_CPU_CLONES: compiles a hot per-element loop three times, for x86-64-v4 (AVX-512), x86-64-v3
// (AVX2 + FMA) and the baseline ISA, picked at load time by the CPU (GCC's target_clones: an
// ifunc resolver tests the CPU's features once). The rest of the extension is baseline code.
// Lambdas do not inherit the attribute: put the loop in a function of its own.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define GK_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define GK_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GK_CPU_CLONES
#endif
