/* The counting passes and the masking of merging.methods.blocks.RankCut (an exact radix select of the j
 * smallest |x| of a tensor seen block by block), each in one pass over a block where torch needs a shift,
 * a mask, a gather and a bincount per pass, and an abs copy, a comparison, a search for ties and a fill
 * for the mask.
 *
 * Entries are float32 bit patterns; the sign bit is dropped, so for |x| the integer order is the value
 * order (NaN sorts above Inf, as in the torch path).
 */
#include <stdint.h>

/* pass 0: hist[high 15 bits of |x|] += 1; pass 1: hist[low 16 bits] += 1 over the entries whose high bits
 * are `bucket`. hist has 65536 int64 counts and is added into. */
void mergelab_rank_count(const uint32_t *bits, int64_t n, int32_t pass_no, int32_t bucket, int64_t *hist)
{
    if (pass_no == 0) {
        for (int64_t i = 0; i < n; i++)
            hist[(bits[i] >> 16) & 0x7FFFu]++;
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        uint32_t b = bits[i];
        if (((b >> 16) & 0x7FFFu) == (uint32_t)bucket)
            hist[b & 0xFFFFu]++;
    }
}

/* Zero, in order, the entries of x that a cut drops. An entry is "in" a cut when its |x| bits are below the
 * cut's value, or equal to it while fewer than left[c] equal ones came before it in this block. With
 * `band` 0 an entry is dropped when it is in cut 0 (TIES: the j smallest); with `band` 1 when it is in
 * cut 0 or not in cut 1 (Breadcrumbs: kept are ranks in [j0, j1)). equal[c] returns how many entries
 * equal to cut c's value were seen until its left[c] ties were placed (all of the block's when they were
 * not): the caller's tie bookkeeping needs no more. */
void mergelab_rank_drop(float *x, int64_t n, int32_t band, const uint32_t *value, const int64_t *left,
                        int64_t *equal)
{
    uint32_t *b = (uint32_t *)x;
    uint32_t v0 = value[0], v1 = band ? value[1] : 0;
    int64_t e0 = 0, e1 = 0, l0 = left[0], l1 = band ? left[1] : 0;
    int64_t i = 0;
    /* while ties are still to be placed, in order, one entry at a time */
    for (; i < n && (e0 < l0 || e1 < l1); i++) {
        uint32_t m = b[i] & 0x7FFFFFFFu;
        int in0 = m < v0 || (m == v0 && e0 < l0);
        int in1 = m < v1 || (m == v1 && e1 < l1);
        e0 += m == v0;
        e1 += m == v1;
        if (in0 || (band && !in1))
            b[i] = 0; /* +0.0f, as masked_fill_(mask, 0) writes */
    }
    /* then no entry equal to a value is in its cut any more: a comparison per entry, vectorised. The equal
     * entries of this part are not counted: the caller only needs to know its ties are all placed. */
    if (band)
        for (; i < n; i++) {
            uint32_t m = b[i] & 0x7FFFFFFFu;
            b[i] = (m < v0 || m >= v1) ? 0u : b[i];
        }
    else
        for (; i < n; i++) {
            uint32_t m = b[i] & 0x7FFFFFFFu;
            b[i] = m < v0 ? 0u : b[i];
        }
    equal[0] = e0;
    if (band)
        equal[1] = e1;
}
