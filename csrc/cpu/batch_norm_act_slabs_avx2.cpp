// The AVX2 build of batch_norm's slab kernels (batch_norm_act_slabs.h), chosen at run time by
// batch_norm_act.cpp: a translation unit of its own, compiled beside the glue. The headers come
// first, outside the pragma, so that no inline function of theirs is emitted as AVX2 code.
#include "batch_norm_act_slab_list.h"

#if GK_SLABS_AVX2
#pragma GCC target("avx2")
#define GK_SLABS_NS slabs_avx2
#include "batch_norm_act_slabs.h"
GK_SLAB_INSTANCES()
#endif
