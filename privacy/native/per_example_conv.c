/* Per-example weight gradients of a 2-D convolution without groups, in float32 (issue 30).
 *
 *     grad[b, o, c, i, j] = sum over (y, x) of delta[b, o, y, x] * input[b, c, y*sh + i*dh - ph, x*sw + j*dw - pw]
 *
 * (0 where the input index falls into the zero padding). The batch's weight gradient is this sum
 * over b as well; per example it is B small products, which oneDNN's grouped backward-weights
 * kernel (one group per example) runs far below its speed on narrow inputs: on a ResNet stem (3
 * input channels, 7x7, stride 2, 32 px) it took 15-17 ms at batch 256 where this loop takes 3.
 *
 * One example at a time: its input is copied into a zero-padded buffer and its delta transposed to
 * (positions, output channels in blocks of 16), both small enough to stay in cache. For each block
 * of 16 output channels, a tile of R (input channel, kernel row) pairs by J kernel columns keeps
 * R*J vectors of 16 accumulators in registers while it runs over the output positions: at each
 * position one load of delta's 16 channels and R*J multiply-adds with one input value each. The
 * sums run over positions in row-major order, the same order for every example and every call
 * (deterministic). No threads of its own: privacy/native_kernels.py splits the batch over torch's
 * thread count, one call per piece (examples are independent: the pieces do not change a result).
 *
 * Built at run time by privacy/native_kernels.py with the system's C compiler; GCC's and Clang's
 * vector extension (vector_size) is the only non-standard feature, lowered to whatever SIMD the
 * machine has (-march=native). */
#include <stdlib.h>
#include <string.h>

#define OB 16    /* output channels per vector */
#define MAX_J 8  /* kernel columns per tile */
#define MAX_R 8  /* (channel, kernel row) pairs per tile */
#define MAX_ACC 24

typedef float v16 __attribute__((vector_size(64)));

typedef struct {
    long Ho, Wo, Opad, sw, dw, row_step;
} geom;

/* Accumulate the tile of R row offsets (rows[r]: where pair r's kernel row starts in the padded
 * input, at column offset 0) by J columns for output block `ob`; results to res[r*J + j]. */
#define TILE(R, J)                                                                           \
static void tile_##R##_##J(const geom *g, const float *restrict base, const long *restrict rows, \
                           const float *restrict dt, v16 *restrict res) {                    \
    v16 acc[R][J];                                                                           \
    const float *start[R];                                                                   \
    for (int r = 0; r < R; ++r) {                                                            \
        start[r] = base + rows[r];                                                           \
        for (int j = 0; j < J; ++j) acc[r][j] = (v16){0};                                    \
    }                                                                                        \
    const long Ho = g->Ho, Wo = g->Wo, Opad = g->Opad, sw = g->sw, dw = g->dw;               \
    const float *d = dt;                                                                     \
    for (long y = 0; y < Ho; ++y) {                                                          \
        const long row = y * g->row_step;                                                    \
        for (long x = 0; x < Wo; ++x, d += Opad) {                                           \
            v16 dv;                                                                          \
            memcpy(&dv, d, sizeof dv);                                                       \
            const long at = row + x * sw;                                                    \
            for (int r = 0; r < R; ++r)                                                      \
                for (int j = 0; j < J; ++j) acc[r][j] += start[r][at + j * dw] * dv;         \
        }                                                                                    \
    }                                                                                        \
    for (int r = 0; r < R; ++r)                                                              \
        for (int j = 0; j < J; ++j) res[r * J + j] = acc[r][j];                              \
}

#define TILES_J(J) TILE(1, J) TILE(2, J) TILE(3, J) TILE(4, J) TILE(5, J) TILE(6, J) TILE(7, J) TILE(8, J)
TILES_J(1) TILES_J(2) TILES_J(3) TILES_J(4) TILES_J(5) TILES_J(6) TILES_J(7) TILES_J(8)

typedef void (*tile_fn)(const geom *, const float *, const long *, const float *, v16 *);
#define ROW_J(J) {tile_1_##J, tile_2_##J, tile_3_##J, tile_4_##J, tile_5_##J, tile_6_##J, tile_7_##J, tile_8_##J}
static const tile_fn TILES[MAX_J][MAX_R] = {ROW_J(1), ROW_J(2), ROW_J(3), ROW_J(4), ROW_J(5),
                                            ROW_J(6), ROW_J(7), ROW_J(8)};

/* x: (B, C, H, W); delta: (B, O, Ho, Wo); out: (B, O, C, KH, KW); all contiguous float32.
 * Returns 0, or 1 if a buffer could not be allocated (out is then incomplete). */
int per_example_conv_weight_grad(const float *x, const float *delta, float *out, long B, long C,
                                 long H, long W, long O, long KH, long KW, long sh, long sw,
                                 long ph, long pw, long dh, long dw) {
    const long Hp = H + 2 * ph, Wp = W + 2 * pw;
    const long Ho = (Hp - dh * (KH - 1) - 1) / sh + 1, Wo = (Wp - dw * (KW - 1) - 1) / sw + 1;
    const long L = Ho * Wo, Opad = (O + OB - 1) / OB * OB, taps = C * KH * KW;
    geom g = {Ho, Wo, Opad, sw, dw, sh * Wp};
    float *xp = calloc((size_t)(C * Hp * Wp), sizeof(float));
    float *dt = calloc((size_t)(L * Opad), sizeof(float));
    long *rows = malloc(sizeof(long) * (size_t)(C * KH));
    v16 *res = aligned_alloc(64, sizeof(v16) * MAX_ACC);
    int failed = !xp || !dt || !rows || !res;
    if (!failed) {
        for (long c = 0; c < C; ++c)
            for (long i = 0; i < KH; ++i) rows[c * KH + i] = (c * Hp + i * dh) * Wp;
        for (long b = 0; b < B; ++b) {
            const float *xb = x + b * C * H * W, *db = delta + b * O * L;
            float *ob_out = out + b * O * taps;
            for (long c = 0; c < C; ++c)
                for (long y = 0; y < H; ++y)
                    memcpy(xp + (c * Hp + y + ph) * Wp + pw, xb + (c * H + y) * W,
                           (size_t)W * sizeof(float));
            /* delta transposed in blocks of 16 positions: contiguous reads, writes in cache */
            for (long l0 = 0; l0 < L; l0 += 16) {
                const long l1 = l0 + 16 < L ? l0 + 16 : L;
                for (long o = 0; o < O; ++o)
                    for (long l = l0; l < l1; ++l) dt[l * Opad + o] = db[o * L + l];
            }
            for (long ob = 0; ob < Opad / OB; ++ob) {
                const long width = O - ob * OB < OB ? O - ob * OB : OB;
                for (long j0 = 0; j0 < KW; j0 += MAX_J) {
                    const long J = KW - j0 < MAX_J ? KW - j0 : MAX_J;
                    long R_max = MAX_ACC / J;
                    if (R_max > MAX_R) R_max = MAX_R;
                    for (long r0 = 0; r0 < C * KH; r0 += R_max) {
                        const long R = C * KH - r0 < R_max ? C * KH - r0 : R_max;
                        TILES[J - 1][R - 1](&g, xp + j0 * dw, rows + r0, dt + ob * OB, res);
                        for (long r = 0; r < R; ++r) {
                            const long tap = (r0 + r) * KW + j0;  /* (c, i) pair r0 + r, column j0 */
                            for (long j = 0; j < J; ++j)
                                for (long o = 0; o < width; ++o)
                                    ob_out[(ob * OB + o) * taps + tap + j] = res[r * J + j][o];
                        }
                    }
                }
            }
        }
    }
    free(xp);
    free(dt);
    free(rows);
    free(res);
    return failed;
}
