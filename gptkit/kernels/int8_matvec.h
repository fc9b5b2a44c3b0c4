/* The int8 matrix-vector product of gptkit/kernels/int8_matvec.c, shared with the one-token step (decode_step.c). */
#include <stdint.h>

/* What a product does to its outputs after the bias: nothing, or GELU (tanh form) or squared ReLU (the MLPs' own). */
enum { ACT_NONE = 0, ACT_GELU = 1, ACT_RELU2 = 2 };

/* y[n] = act(scale[n] * sum_k w[n, k] x[k] + bias[n]) for the n_len rows (bias may be NULL; k_len a multiple of 32),
 * split over `threads` OpenMP threads; accumulate: y[n] += the product instead (a residual connection, act ACT_NONE). */
void int8_matvec_fused(const int8_t *w, const float *scale, const float *bias, const float *x, int64_t k_len, int64_t n_len,
                       float *y, int act, int accumulate, int threads);

/* e^x for 8 floats at once (AVX2 + FMA), within 2 ulp; shared by GELU and the attention's softmax. */
#include <immintrin.h>
__m256 exp8(__m256 x);
