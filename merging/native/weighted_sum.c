/* Task arithmetic's weighted sum over a (T, n) float32 stack of task vectors:
 *
 *     out = ((w_1 tau_1 + w_2 tau_2) + ...) + w_T tau_T  [+ base]
 *
 * in checkpoint order, every product and every sum rounded to float32 on its own: compiled with
 * -ffp-contract=off (merging/native/weighted_sum.py), so no multiply-add is fused and the bytes equal torch's
 * mul and add in the same order (the torch path of merging/methods/task_vectors.weighted_sum). The columns go
 * tile by tile so that `out` stays in cache while each checkpoint's row is added to it.
 */
#include <stdint.h>

#include "weighted_tile.h"

#define TILE 4096 /* floats of out: 16 KiB */

void mergelab_weighted_sum(const float *x, int64_t stride, int32_t tasks, const float *w, const float *base,
                           float *out, int64_t n)
{
    for (int64_t a = 0; a < n; a += TILE) {
        int64_t m = n - a < TILE ? n - a : TILE;
        float *o = out + a;
        weighted_tile(x + a, stride, tasks, w, o, m);
        if (base != 0) {
            const float *b = base + a;
            for (int64_t c = 0; c < m; c++)
                o[c] = o[c] + b[c];
        }
    }
}
