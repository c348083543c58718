/* Task arithmetic's weighted sum over columns [0, n) of a float32 stack of task vectors (row i at
 * x + i * stride):
 *
 *     out = ((w_1 tau_1 + w_2 tau_2) + ...) + w_T tau_T
 *
 * in checkpoint order, every product and every sum rounded to float32 on its own. An including file must be
 * compiled with -ffp-contract=off, so that no multiply-add is fused: then the bytes equal torch's mul and add
 * in the same order. Shared by weighted_sum.c and stored_arithmetic.c. */
#ifndef MERGELAB_WEIGHTED_TILE_H
#define MERGELAB_WEIGHTED_TILE_H

#include <stdint.h>

static void weighted_tile(const float *x, int64_t stride, int32_t tasks, const float *w, float *out, int64_t n)
{
    float w0 = w[0];
    for (int64_t c = 0; c < n; c++)
        out[c] = x[c] * w0;
    for (int32_t i = 1; i < tasks; i++) {
        const float *t = x + i * stride;
        float wi = w[i];
        for (int64_t c = 0; c < n; c++)
            out[c] = out[c] + t[c] * wi;
    }
}

#endif
