/* Fused linear merge: out[i] = base[i] + sum_k lam[k] * tau[k][i], one streaming pass.
 *
 * Built on first use by mergesweep/merge/native.py (cc -O3 -march=native) and called through
 * ctypes. Each block of `block` elements (at most MAX_BLOCK; 512-1024 is fastest on the CPUs
 * measured: fewer streams in flight per pass) is accumulated in float32 in a stack buffer that
 * stays in L1: base is read once, each task vector once, out written once, so the pass moves
 * (N + 2) * P elements like a STREAM triad moves 3 * P. bfloat16 is widened by a 16-bit shift
 * and narrowed with round-to-nearest-even (NaN stays NaN), as torch does.
 */
#include <stdint.h>
#include <string.h>

#define MAX_BLOCK 4096

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u; /* quiet NaN, sign and payload top bits kept */
    return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? nan : rounded);
}

/* The block loop of each layout: LOAD_BASE fills acc, LOAD_TAU reads one task vector element,
 * STORE writes one result. */
#define MERGE_BODY(LOAD_BASE, LOAD_TAU, STORE)                                       \
    float acc[MAX_BLOCK];                                                            \
    if (block < 1 || block > MAX_BLOCK) block = MAX_BLOCK;                           \
    for (int64_t s = 0; s < n; s += block) {                                         \
        const int64_t m = (n - s) < block ? (n - s) : block;                         \
        for (int64_t i = 0; i < m; i++) acc[i] = LOAD_BASE(base[s + i]);             \
        for (int64_t k = 0; k < experts; k++) {                                      \
            const float c = lam[k];                                                  \
            const TAU_T *t = tau + k * stride + s;                                   \
            for (int64_t i = 0; i < m; i++) acc[i] += c * LOAD_TAU(t[i]);            \
        }                                                                            \
        for (int64_t i = 0; i < m; i++) out[s + i] = STORE(acc[i]);                  \
    }

#define AS_IS(x) (x)

#define TAU_T uint16_t
void merge_bf16_bf16(uint16_t *restrict out, const uint16_t *restrict base,
                     const uint16_t *restrict tau, int64_t stride, const float *restrict lam,
                     int64_t experts, int64_t n, int64_t block) {
    MERGE_BODY(bf16_to_f32, bf16_to_f32, f32_to_bf16)
}

void merge_f32_bf16(float *restrict out, const float *restrict base,
                    const uint16_t *restrict tau, int64_t stride, const float *restrict lam,
                    int64_t experts, int64_t n, int64_t block) {
    MERGE_BODY(AS_IS, bf16_to_f32, AS_IS)
}
#undef TAU_T

#define TAU_T float
void merge_f32_f32(float *restrict out, const float *restrict base, const float *restrict tau,
                   int64_t stride, const float *restrict lam, int64_t experts, int64_t n,
                   int64_t block) {
    MERGE_BODY(AS_IS, AS_IS, AS_IS)
}
#undef TAU_T
