// AVX-512 max pool (kernel = stride = 2, no padding) over NCHW float32 planes of short rows, 16
// windows a vector: OW <= 16, IW == 2 OW, IH == 2 OH (the CIFAR CNN's 16-, 8- and 4-wide and the
// autoencoder's 14- and 7-wide outputs). A group is R = 16 / OW (rounded down; 1 from OW > 8)
// window rows of a plane, the last of each plane as many as remain: its windows lie over 4 R OW
// <= 64 consecutive inputs in one fixed arrangement, moved with four vector loads and a permute
// per tap, where the row kernels (pool_2x2_rows.h) fill a quarter or half of a vector on such rows
// and the forward's row loop is scalar or 8 wide.
#pragma once

#include <cstdint>

#include "genkern/activation.h"

namespace genkern::cpu {

// Whether a pool of these output sizes runs here (pool_2x2_rows_enabled() on x86-64 too).
bool pool_2x2_groups_take(int64_t OH, int64_t OW);

// R, the window rows of a whole group.
int64_t pool_2x2_group_rows(int64_t OW);

// The groups of `planes` planes of OH x OW windows, and a group's first window row (counted over
// all planes: the tensors' pointers are at row r's windows at r OW, its inputs at 4 r OW).
int64_t pool_2x2_group_count(int64_t planes, int64_t OH, int64_t OW);
int64_t pool_2x2_group_first_row(int64_t group, int64_t OH, int64_t OW);

// Groups [g0, g1), the pointers at group g0's first row: y = act(max) over each window in torch's
// tap order (the first maximum; a NaN wins, the last NaN of a window), idx (when not null) the
// flat index within the plane of that tap; act: identity, ReLU or leaky ReLU, as act_forward.
void max_pool_2x2_forward_groups(const float* x, float* y, int64_t* idx, int64_t g0, int64_t g1,
                                 int64_t OH, int64_t OW, Activation act, float slope);

// Whether max_pool_2x2_backward_groups takes act's backward itself (identity, ReLU, leaky ReLU).
bool max_pool_2x2_groups_fuse_backward(Activation act);

// Its input gradient, the same way: each input gets act_backward(g, saved) of its window where
// idx holds it and +0 elsewhere (+ 0, as the scatter into zeros adds it); saved (the pooled
// output or its input before act, read beside g) unused for identity.
void max_pool_2x2_backward_groups(const float* g, const float* saved, const int64_t* idx,
                                  float* gx, int64_t g0, int64_t g1, int64_t OH, int64_t OW,
                                  Activation act, float slope);

}  // namespace genkern::cpu
