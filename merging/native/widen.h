/* Stored rows (bfloat16, float16, float32) widened to float32, minus the base's float32 rows when given:
 * exact widening and one float32 subtraction, the bytes of torch's copy_ then sub_. Shared by convert.c (the
 * reader's pass) and stored_arithmetic.c (the stored route's tiles). */
#ifndef MERGELAB_WIDEN_H
#define MERGELAB_WIDEN_H

#include <stdint.h>
#include <string.h>

#include "bf16.h"

#ifdef __FLT16_MAX__ /* the compiler has _Float16 (gcc >= 12, clang on x86-64 and arm64) */
#define HAS_F16 1
#else
#define HAS_F16 0
#endif

static void widen_bf16(const uint16_t *src, const float *minus, float *dst, int64_t n)
{
    if (minus)
        for (int64_t i = 0; i < n; i++)
            dst[i] = bf16_to_f32(src[i]) - minus[i];
    else
        for (int64_t i = 0; i < n; i++)
            dst[i] = bf16_to_f32(src[i]);
}

static void widen_f32(const float *src, const float *minus, float *dst, int64_t n)
{
    if (minus)
        for (int64_t i = 0; i < n; i++)
            dst[i] = src[i] - minus[i];
    else
        memcpy(dst, src, (size_t)n * sizeof(float));
}

#if HAS_F16
static void widen_f16(const _Float16 *src, const float *minus, float *dst, int64_t n)
{
    if (minus)
        for (int64_t i = 0; i < n; i++)
            dst[i] = (float)src[i] - minus[i];
    else
        for (int64_t i = 0; i < n; i++)
            dst[i] = (float)src[i];
}
#endif

#endif
