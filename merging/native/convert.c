/* Conversions between the stored dtypes and the engine's float32, each in one pass over memory.
 *
 * widen: stored rows (bfloat16, float16 or float32) to float32, minus the base's float32 rows when given,
 * so the reader hands the engine task vectors tau_i = theta_i - theta_0 without a second pass over the
 * stack. Widening is exact and the subtraction is one IEEE float32 operation, so the bytes equal torch's
 * copy_ followed by sub_.
 *
 * narrow_bf16: float32 to bfloat16 with round-to-nearest-even (torch's rounding), reporting in the same pass
 * whether every value was finite (the engine refuses a NaN/Inf output before it is written).
 *
 * Plain C99; no -ffast-math, so NaN and Inf behave as IEEE says.
 */
#include <stdint.h>

#include "bf16.h"
#include "widen.h"

void mergelab_widen_bf16(const uint16_t *src, const float *minus, float *dst, int64_t n)
{
    widen_bf16(src, minus, dst, n);
}

void mergelab_widen_f32(const float *src, const float *minus, float *dst, int64_t n)
{
    widen_f32(src, minus, dst, n);
}

int mergelab_has_f16(void) { return HAS_F16; }

#if HAS_F16
void mergelab_widen_f16(const _Float16 *src, const float *minus, float *dst, int64_t n)
{
    widen_f16(src, minus, dst, n);
}
#else
void mergelab_widen_f16(const uint16_t *src, const float *minus, float *dst, int64_t n)
{
    (void)src, (void)minus, (void)dst, (void)n;
}
#endif

/* Returns 1 when every value is finite, else 0 (the output is then refused; a NaN narrows to 0x7FC0). */
int mergelab_narrow_bf16(const float *src, uint16_t *dst, int64_t n)
{
    uint32_t special = 0; /* non-zero once a value is NaN or Inf */
    for (int64_t i = 0; i < n; i++)
        dst[i] = f32_to_bf16(src[i], &special);
    return special == 0;
}
