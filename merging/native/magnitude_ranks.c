/* DELLA's keep probabilities (merging/methods/sparsify.py, della_keep_probabilities), row by row:
 *
 *     p = rank * scale + offset,   rank = the entry's place among its row's |x| in ascending order, ties by
 *                                  position (torch's stable argsort of x.abs(), a scatter of 0 .. cols - 1)
 *
 * by a stable least-significant-digit radix sort of the |x| bit patterns (as unsigned integers they order as
 * the magnitudes do), a byte per pass, a pass skipped where every entry shares that byte. Every NaN gets one
 * key above +Inf, so NaNs rank last in position order, as torch sorts them. Compiled with -ffp-contract=off:
 * the product and the sum are rounded apart, as torch's mul_ and add_ are.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline uint32_t magnitude_key(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    u &= 0x7FFFFFFFu;
    return u > 0x7F800000u ? 0x7FFFFFFFu : u;
}

/* Rows [0, rows) of `cols` float32 values at x into out (the same layout). Returns 0, or -1 (nothing
 * written) when its scratch memory cannot be allocated. */
int mergelab_della_probabilities(const float *x, int64_t rows, int64_t cols, float scale, float offset,
                                 float *out)
{
    uint64_t *items = malloc((size_t)cols * sizeof(uint64_t)); /* key << 32 | column */
    uint64_t *spare = malloc((size_t)cols * sizeof(uint64_t));
    if (items == NULL || spare == NULL) {
        free(items);
        free(spare);
        return -1;
    }
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * cols;
        float *probs = out + r * cols;
        uint64_t *a = items, *b = spare;
        for (int64_t c = 0; c < cols; c++)
            a[c] = (uint64_t)magnitude_key(row[c]) << 32 | (uint64_t)c;
        for (int shift = 32; shift < 64; shift += 8) {
            int64_t start[256] = {0};
            for (int64_t c = 0; c < cols; c++)
                start[(a[c] >> shift) & 0xFF]++;
            if (start[(a[0] >> shift) & 0xFF] == cols)
                continue; /* one byte value for the whole row: the pass would not move anything */
            int64_t at = 0;
            for (int d = 0; d < 256; d++) {
                int64_t n = start[d];
                start[d] = at;
                at += n;
            }
            for (int64_t c = 0; c < cols; c++)
                b[start[(a[c] >> shift) & 0xFF]++] = a[c];
            uint64_t *t = a;
            a = b;
            b = t;
        }
        for (int64_t p = 0; p < cols; p++)
            probs[(uint32_t)a[p]] = (float)p * scale + offset;
    }
    free(items);
    free(spare);
    return 0;
}
