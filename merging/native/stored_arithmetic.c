/* Task arithmetic straight from the stored rows (bfloat16, float16 or float32), in one pass over them:
 *
 *     tau_i = theta_i - theta_0,   merged = ((sum_i w_i tau_i) [/ divisor] [* lambda]) + theta_0
 *
 * cast to the output dtype (bfloat16, float16 or float32), with the geometry sums of (tau_1 .. tau_T,
 * delta = merged - theta_0) on the way.
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
#include <string.h>

#include "bf16.h"
#include "geometry_tile.h"
#include "weighted_tile.h"
#include "widen.h"

enum { BF16 = 0, F16 = 1, F32 = 2 }; /* the stored and output dtypes (stored_arithmetic.py's codes) */

int mergelab_stored_has_f16(void) { return HAS_F16; }

/* Columns [a, a + n) of a stored row of dtype `code` into dst, widened, minus `minus` when given. */
static void widen_range(const void *row, int code, int64_t a, int64_t n, const float *minus, float *dst)
{
    if (code == BF16)
        widen_bf16((const uint16_t *)row + a, minus, dst, n);
    else if (code == F32)
        widen_f32((const float *)row + a, minus, dst, n);
#if HAS_F16
    else
        widen_f16((const _Float16 *)row + a, minus, dst, n);
#endif
}

/* out[a .. a + n) = merged in the output dtype, rounded to nearest even as torch casts; ORs into *special
 * a non-zero value when a merged float32 value is NaN or Inf (the engine's check: a finite float32 value
 * that overflows float16 is written as Inf, as the float32 route's cast does). */
static void narrow_range(const float *merged, int code, void *out, int64_t a, int64_t n, uint32_t *special)
{
    if (code == BF16) {
        uint16_t *o = (uint16_t *)out + a;
        for (int64_t c = 0; c < n; c++)
            o[c] = f32_to_bf16(merged[c], special);
        return;
    }
    uint32_t found = 0;
    for (int64_t c = 0; c < n; c++) {
        uint32_t u;
        memcpy(&u, &merged[c], sizeof u);
        found |= (u & 0x7F800000u) == 0x7F800000u;
    }
    *special |= found;
    if (code == F32) {
        memcpy((float *)out + a, merged, (size_t)n * sizeof(float));
    } else {
#if HAS_F16
        _Float16 *o = (_Float16 *)out + a;
        for (int64_t c = 0; c < n; c++)
            o[c] = (_Float16)merged[c];
#endif
    }
}

/* Columns [0, cols) of T + 1 stored bfloat16 rows at x (row i at x + i * stride; the base last) into `out`
 * (cols bfloat16 values). `divisor` divides the weighted sum where `divide`, `lam` scales it where `scale`.
 * With `gram` (rows x rows float64), the geometry sums are added into gram, l1[2] and counts[3], as
 * mergelab_geometry_sums adds them. Returns 1 when every merged value is finite, 0 when one is NaN or Inf,
 * -1 (nothing written) when its scratch memory cannot be allocated. */
int mergelab_stored_task_arithmetic(const void *x, int32_t in_code, int64_t stride, int32_t tasks,
                                    int64_t cols, const float *w, int32_t divide, float divisor, int32_t scale,
                                    float lam, void *out, int32_t out_code, double *gram, double *l1,
                                    int64_t *counts)
{
    if ((in_code == F16 || out_code == F16) && !HAS_F16)
        return -2;
    size_t width = in_code == F32 ? 4 : 2;
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
    const char *rows_at = (const char *)x;
    const void *stored_base = rows_at + (size_t)tasks * (size_t)stride * width;
    uint32_t special = 0;
    for (int64_t a = 0; a < cols; a += tile) {
        int64_t n = cols - a < tile ? cols - a : tile;
        widen_range(stored_base, in_code, a, n, NULL, base);
        for (int32_t i = 0; i < tasks; i++)
            widen_range(rows_at + (size_t)i * (size_t)stride * width, in_code, a, n, base,
                        scratch + (int64_t)i * tile);
        weighted_tile(scratch, tile, tasks, w, merged, n);
        if (divide)
            for (int64_t c = 0; c < n; c++)
                merged[c] = merged[c] / divisor;
        if (scale)
            for (int64_t c = 0; c < n; c++)
                merged[c] = merged[c] * lam;
        for (int64_t c = 0; c < n; c++)
            merged[c] = merged[c] + base[c];
        narrow_range(merged, out_code, out, a, n, &special);
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
