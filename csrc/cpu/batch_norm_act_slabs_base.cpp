// The baseline build of batch_norm's slab kernels (batch_norm_act_slabs.h), with every
// instantiation batch_norm_act.cpp calls: a translation unit of its own, compiled beside the glue.
#include "batch_norm_act_slab_list.h"

#define GK_SLABS_NS slabs_base
#include "batch_norm_act_slabs.h"
GK_SLAB_INSTANCES()
