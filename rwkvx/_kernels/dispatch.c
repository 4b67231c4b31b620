/* Kernel selection. Compiled with baseline flags only: it must run on every
 * CPU of the architecture, so it may name ISA-specific functions but never
 * execute their instructions itself. */
#include "kernels.h"

static const rwkvx_kernel_table table_ref = {
    .isa = "scalar",
    .matmul = rwkvx_matmul_ref,
    .dequant_row = rwkvx_dequant_row_ref,
};

const rwkvx_kernel_table *rwkvx_kernels = &table_ref;
