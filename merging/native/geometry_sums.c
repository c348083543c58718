/* Geometry sums of a column range of a (T + 1, cols) float32 stack: rows tau_1 .. tau_T, then delta.
 *
 * The same figures as merging.geometry._Sums._add_step, in one pass over the columns instead of ~15 torch
 * passes: the columns go tile by tile, every statistic reads the tile while it is in cache. Plain C99 with
 * fixed-width lane arrays so that the compiler vectorises the sums WITHOUT -ffast-math (which would let it
 * assume no NaN, and the engine's NaN/Inf check reads the Gram diagonal: a NaN must propagate into it).
 * Everything is summed in a fixed order that depends only on T and the range, so the figures never depend
 * on threads, cores or load. Float32 within a tile, float64 across tiles; counts are exact integers.
 */
#include <stdlib.h>

#include "geometry_tile.h"

/* Add the geometry sums of columns [0, cols) of the stack at x (rows = T + 1 rows, each contiguous, row i
 * starting at x + i * stride) into gram (rows x rows, float64, row-major), l1[2] and counts[3]. With
 * `merged` (cols floats), the last row holds the base and becomes delta = merged - base first, tile by
 * tile while it is in cache; without, it holds delta already. Returns 0, or -1 with nothing touched when
 * the scratch memory cannot be allocated. */
int mergelab_geometry_sums(float *x, int64_t stride, int32_t rows, int64_t cols, const float *merged,
                           double *gram, double *l1, int64_t *counts)
{
    int64_t tile = geometry_tile(rows);
    double *lanes = calloc((size_t)rows * rows * GL, sizeof(double));
    if (lanes == NULL)
        return -1;
    for (int64_t a = 0; a < cols; a += tile) {
        int64_t n = cols - a < tile ? cols - a : tile;
        int64_t ahead = cols - a - n < tile ? cols - a - n : tile;
        if (merged != NULL)
            form_delta(x + (rows - 1) * stride + a, merged + a, n, ahead);
        add_gram(x + a, stride, rows, n, lanes);
        add_columns(x + a, stride, rows - 1, n, ahead, l1, counts);
    }
    fold_gram(lanes, rows, gram);
    free(lanes);
    return 0;
}
