/* bfloat16 <-> float32 as torch converts them, shared by convert.c and stored_arithmetic.c. */
#ifndef MERGELAB_BF16_H
#define MERGELAB_BF16_H

#include <stdint.h>
#include <string.h>

/* Widening is exact: the bfloat16 bits are a float32's upper half. */
static inline float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even (torch's rounding); a NaN becomes 0x7FC0. ORs into *special a non-zero value when
 * f is NaN or Inf (exponent all ones), so a caller learns in the same pass whether every value was finite. */
static inline uint16_t f32_to_bf16(float f, uint32_t *special)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    *special |= (u & 0x7F800000u) == 0x7F800000u;
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)0x7FC0 : (uint16_t)rounded;
}

#endif
