/* The per-tile geometry sums shared by geometry_sums.c and stored_arithmetic.c: the Gram products, L1
 * masses and sign-conflict counts of one tile of columns of a (T + 1, cols) float32 stack (rows tau_1 ..
 * tau_T, then delta), and the tile width both use, so that the same columns give the same figures whichever
 * kernel summed them.
 *
 * The Gram products are written as explicit fused multiply-adds where the target has them, and as a product
 * and a sum where it has none: exactly what -ffp-contract=fast makes of `s += a * b`, but also under
 * -ffp-contract=off, which stored_arithmetic.c needs for its own arithmetic. So the figures do not depend on
 * the file's contraction flag.
 */
#ifndef MERGELAB_GEOMETRY_TILE_H
#define MERGELAB_GEOMETRY_TILE_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define LANES 16          /* independent float32 accumulators: one or two vector registers */
#define TILE_FLOATS 8192  /* a tile of all T + 1 rows fills about 32 KiB, an L1 data cache */
#define MAX_TILE 1024
#define GL 8              /* lanes of each Gram accumulator: one 256-bit register */

#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
#define MUL_ADD(acc, a, b) ((acc) = fmaf((a), (b), (acc)))
#else
#define MUL_ADD(acc, a, b) ((acc) += (a) * (b))
#endif

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)0)
#endif

/* Dot products of rows a0, a1 with rows b0..b3 over n columns, added into lanes[r][q][0..GL): eight
 * independent accumulators of GL lanes each, so the FMAs neither wait on each other nor on loads. Written
 * out pair by pair: one inner loop over lanes is what the compiler turns into vector code. */
static void dot_block(const float *a0, const float *a1, const float *b0, const float *b1, const float *b2,
                      const float *b3, int64_t n, double lanes[2][4][GL])
{
    float s00[GL] = {0}, s01[GL] = {0}, s02[GL] = {0}, s03[GL] = {0};
    float s10[GL] = {0}, s11[GL] = {0}, s12[GL] = {0}, s13[GL] = {0};
    int64_t c = 0;
    for (; c + GL <= n; c += GL)
        for (int l = 0; l < GL; l++) {
            float u = a0[c + l], v = a1[c + l];
            float p = b0[c + l], q = b1[c + l], r = b2[c + l], t = b3[c + l];
            MUL_ADD(s00[l], u, p);
            MUL_ADD(s01[l], u, q);
            MUL_ADD(s02[l], u, r);
            MUL_ADD(s03[l], u, t);
            MUL_ADD(s10[l], v, p);
            MUL_ADD(s11[l], v, q);
            MUL_ADD(s12[l], v, r);
            MUL_ADD(s13[l], v, t);
        }
    for (int l = 0; c < n; c++, l++) {
        MUL_ADD(s00[l], a0[c], b0[c]);
        MUL_ADD(s01[l], a0[c], b1[c]);
        MUL_ADD(s02[l], a0[c], b2[c]);
        MUL_ADD(s03[l], a0[c], b3[c]);
        MUL_ADD(s10[l], a1[c], b0[c]);
        MUL_ADD(s11[l], a1[c], b1[c]);
        MUL_ADD(s12[l], a1[c], b2[c]);
        MUL_ADD(s13[l], a1[c], b3[c]);
    }
    for (int l = 0; l < GL; l++) {
        lanes[0][0][l] += s00[l];
        lanes[0][1][l] += s01[l];
        lanes[0][2][l] += s02[l];
        lanes[0][3][l] += s03[l];
        lanes[1][0][l] += s10[l];
        lanes[1][1][l] += s11[l];
        lanes[1][2][l] += s12[l];
        lanes[1][3][l] += s13[l];
    }
}

/* Add the tile's Gram products into lanes (rows x rows x GL, float64): rows two at a time against rows
 * four at a time, the lower triangle and the blocks that straddle the diagonal (the few products above it
 * are computed and never used; a missing row reads row 0 in their place). */
static void add_gram(const float *x, int64_t stride, int rows, int64_t n, double *lanes)
{
    for (int i = 0; i < rows; i += 2) {
        const float *a1 = x + (i + 1 < rows ? i + 1 : 0) * stride;
        for (int j = 0; j <= i + 1 && j < rows; j += 4) {
            const float *b[4];
            double block[2][4][GL] = {{{0}}};
            for (int q = 0; q < 4; q++)
                b[q] = x + (j + q < rows ? j + q : 0) * stride;
            dot_block(x + i * stride, a1, b[0], b[1], b[2], b[3], n, block);
            for (int r = 0; r < 2 && i + r < rows; r++)
                for (int q = 0; q < 4 && j + q <= i + r; q++)
                    for (int l = 0; l < GL; l++)
                        lanes[((i + r) * rows + j + q) * GL + l] += block[r][q][l];
        }
    }
}

/* Kept mass and sign conflicts of the tile's columns, added into l1 (task L1, dropped L1) and counts
 * (conflicts, conflicting and dropped, conflicting and resolved with the sign of the sum of the tau_i).
 * An entry conflicts when some tau_i < 0 and some tau_j > 0 and none is NaN (the torch path's
 * amin < 0 & amax > 0, where a NaN makes both NaN); a NaN among the tau_i is the one way their L1 mass
 * becomes NaN (+Inf and -Inf give +Inf). Delta == 0 is dropped, -0 included. Also asks the cache for the
 * next `ahead` columns of every row, one line per row per LANES columns: the hardware prefetcher stops at
 * page boundaries, and a tile of the wider stacks is about one page per row. */
static void add_columns(const float *x, int64_t stride, int tasks, int64_t n, int64_t ahead, double *l1,
                        int64_t *counts)
{
    const float *delta = x + tasks * stride;
    float task_l1[LANES] = {0}, dropped_l1[LANES] = {0};
    int32_t conflicts[LANES] = {0}, dropped_conflicts[LANES] = {0}, summed_conflicts[LANES] = {0};
    int64_t c = 0;
    for (; c + LANES <= n; c += LANES) {
        if (c < ahead)
            for (int i = 0; i <= tasks; i++)
                PREFETCH(x + i * stride + n + c);
        float sum[LANES] = {0}, mass[LANES] = {0}, low[LANES] = {0}, high[LANES] = {0};
        for (int i = 0; i < tasks; i++) {
            const float *t = x + i * stride + c;
            for (int l = 0; l < LANES; l++) {
                float v = t[l];
                sum[l] += v;
                mass[l] += fabsf(v);
                low[l] = v < low[l] ? v : low[l]; /* a NaN never enters */
                high[l] = v > high[l] ? v : high[l];
            }
        }
        for (int l = 0; l < LANES; l++) {
            float d = delta[c + l];
            int32_t dropped = d == 0.0f;
            int32_t conflict = (low[l] < 0.0f) & (high[l] > 0.0f) & (mass[l] == mass[l]);
            int32_t summed = ((d > 0.0f) & (sum[l] > 0.0f)) | ((d < 0.0f) & (sum[l] < 0.0f));
            task_l1[l] += mass[l];
            dropped_l1[l] += dropped ? mass[l] : 0.0f;
            conflicts[l] += conflict;
            dropped_conflicts[l] += conflict & dropped;
            summed_conflicts[l] += conflict & summed;
        }
    }
    double task = 0.0, dropped_mass = 0.0;
    int64_t n_conflicts = 0, n_dropped = 0, n_summed = 0;
    for (int l = 0; l < LANES; l++) {
        task += task_l1[l];
        dropped_mass += dropped_l1[l];
        n_conflicts += conflicts[l];
        n_dropped += dropped_conflicts[l];
        n_summed += summed_conflicts[l];
    }
    for (; c < n; c++) { /* the tile's last columns, one at a time */
        float sum = 0.0f, mass = 0.0f, low = 0.0f, high = 0.0f;
        for (int i = 0; i < tasks; i++) {
            float v = x[i * stride + c];
            sum += v;
            mass += fabsf(v);
            low = v < low ? v : low;
            high = v > high ? v : high;
        }
        float d = delta[c];
        int32_t dropped = d == 0.0f;
        int32_t conflict = (low < 0.0f) & (high > 0.0f) & (mass == mass);
        task += mass;
        dropped_mass += dropped ? mass : 0.0f;
        n_conflicts += conflict;
        n_dropped += conflict & dropped;
        n_summed += conflict & (((d > 0.0f) & (sum > 0.0f)) | ((d < 0.0f) & (sum < 0.0f)));
    }
    l1[0] += task;
    l1[1] += dropped_mass;
    counts[0] += n_conflicts;
    counts[1] += n_dropped;
    counts[2] += n_summed;
}

/* Delta = merged - base into the tile's last row (the base's), exactly torch.sub's float32 result. */
static void form_delta(float *delta, const float *merged, int64_t n, int64_t ahead)
{
    for (int64_t c = 0; c < n; c++)
        delta[c] = merged[c] - delta[c];
    for (int64_t c = 0; c < ahead; c += LANES)
        PREFETCH(merged + n + c);
}

/* Tile width in columns for a stack of `rows` rows: all of a tile's rows fill about an L1 data cache. */
static int64_t geometry_tile(int rows)
{
    int64_t tile = TILE_FLOATS / rows / LANES * LANES;
    if (tile < LANES)
        tile = LANES;
    return tile > MAX_TILE ? MAX_TILE : tile;
}

/* Fold the Gram lanes (rows x rows x GL) into gram (rows x rows, both triangles), added into. */
static void fold_gram(const double *lanes, int rows, double *gram)
{
    for (int i = 0; i < rows; i++)
        for (int j = 0; j <= i; j++) {
            double dot = 0.0;
            for (int l = 0; l < GL; l++)
                dot += lanes[(i * rows + j) * GL + l];
            gram[i * rows + j] += dot;
            if (j != i)
                gram[j * rows + i] += dot;
        }
}

#endif
