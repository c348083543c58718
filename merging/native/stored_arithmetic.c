/* Task arithmetic straight from the stored bfloat16 rows, in one pass over them:
 *
 *     tau_i = theta_i - theta_0,   merged = ((sum_i w_i tau_i) [/ divisor] [* lambda]) + theta_0
 *
 * narrowed to bfloat16, with the geometry sums of (tau_1 .. tau_T, delta = merged - theta_0) on the way.
 * The float32 stack the engine otherwise builds (widened by the reader, summed, summed again for geometry,
 * narrowed: four passes over T + 1 float32 rows) only ever exists here one tile at a time, in cache.
 *
 * Every value equals the engine's float32 path bit for bit: widening is exact, each subtraction, product,
 * sum, division and scaling is one float32 operation in the same order as torch's ops there (this file is
 * compiled with -ffp-contract=off, so none is fused), and the geometry uses the same tile functions and
 * widths (geometry_tile.h) over the same column range as geometry_sums.c.
 */
#include <stdint.h>
#include <stdlib.h>

#include "bf16.h"
#include "geometry_tile.h"

/* Columns [0, cols) of T + 1 stored bfloat16 rows at x (row i at x + i * stride; the base last) into `out`
 * (cols bfloat16 values). `divisor` divides the weighted sum where `divide`, `lam` scales it where `scale`.
 * With `gram` (rows x rows float64), the geometry sums are added into gram, l1[2] and counts[3], as
 * mergelab_geometry_sums adds them. Returns 1 when every merged value is finite, 0 when one is NaN or Inf,
 * -1 (nothing written) when its scratch memory cannot be allocated. */
int mergelab_stored_task_arithmetic(const uint16_t *x, int64_t stride, int32_t tasks, int64_t cols,
                                    const float *w, int32_t divide, float divisor, int32_t scale, float lam,
                                    uint16_t *out, double *gram, double *l1, int64_t *counts)
{
    int rows = tasks + 1;
    int64_t tile = geometry_tile(rows);
    float *scratch = malloc((size_t)(rows + 1) * (size_t)tile * sizeof(float)); /* tau rows, base, merged */
    double *lanes = gram != NULL ? calloc((size_t)rows * rows * GL, sizeof(double)) : NULL;
    if (scratch == NULL || (gram != NULL && lanes == NULL)) {
        free(scratch);
        free(lanes);
        return -1;
    }
    float *base = scratch + (int64_t)tasks * tile;
    float *merged = scratch + (int64_t)rows * tile;
    const uint16_t *stored_base = x + (int64_t)tasks * stride;
    uint32_t special = 0;
    for (int64_t a = 0; a < cols; a += tile) {
        int64_t n = cols - a < tile ? cols - a : tile;
        for (int64_t c = 0; c < n; c++)
            base[c] = bf16_to_f32(stored_base[a + c]);
        for (int32_t i = 0; i < tasks; i++) {
            const uint16_t *s = x + i * stride + a;
            float *t = scratch + (int64_t)i * tile;
            for (int64_t c = 0; c < n; c++)
                t[c] = bf16_to_f32(s[c]) - base[c];
        }
        float w0 = w[0];
        for (int64_t c = 0; c < n; c++)
            merged[c] = scratch[c] * w0;
        for (int32_t i = 1; i < tasks; i++) {
            const float *t = scratch + (int64_t)i * tile;
            float wi = w[i];
            for (int64_t c = 0; c < n; c++)
                merged[c] = merged[c] + t[c] * wi;
        }
        if (divide)
            for (int64_t c = 0; c < n; c++)
                merged[c] = merged[c] / divisor;
        if (scale)
            for (int64_t c = 0; c < n; c++)
                merged[c] = merged[c] * lam;
        for (int64_t c = 0; c < n; c++) {
            merged[c] = merged[c] + base[c];
            out[a + c] = f32_to_bf16(merged[c], &special);
        }
        if (gram != NULL) {
            form_delta(base, merged, n, 0);
            add_gram(scratch, tile, rows, n, lanes);
            add_columns(scratch, tile, tasks, n, 0, l1, counts);
        }
    }
    if (gram != NULL)
        fold_gram(lanes, rows, gram);
    free(scratch);
    free(lanes);
    return special == 0;
}
