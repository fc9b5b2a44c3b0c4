/* One row of input times int8 weights with a float32 scale per output row: the decode step of gptkit's int8
 * precision (gptkit/weight_formats.py), built by gptkit/native.py with the C compiler at first use.
 *
 * A decode step at batch 1 reads every weight once, so its speed is memory's, as long as the kernel keeps up:
 * torch's own int8 kernel does not on CPUs without AVX-512 (about 10 GB/s of weights where memory gives 17-18).
 * This one widens 8 weights at a time to float32 and multiplies them into four float32 accumulators (AVX2 + FMA),
 * the input staying float32: the same products as the weights widened to float32, up to the order of the sums.
 */
#include <immintrin.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 widen8(__m128i bytes) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}

/* y[n] = scale[n] * sum_k w[n, k] x[k] (+ bias[n] unless bias is NULL) for the rows n0 <= n < n1; k_len a multiple of 32. */
static void rows(const int8_t *w, const float *scale, const float *bias, const float *x, int64_t k_len, int64_t n0, int64_t n1,
                 float *y) {
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *row = w + n * k_len;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (int64_t k = 0; k < k_len; k += 32) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(row + k));
            __m128i lo = _mm256_castsi256_si128(raw), hi = _mm256_extracti128_si256(raw, 1);
            a0 = _mm256_fmadd_ps(widen8(lo), _mm256_loadu_ps(x + k), a0);
            a1 = _mm256_fmadd_ps(widen8(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(x + k + 8), a1);
            a2 = _mm256_fmadd_ps(widen8(hi), _mm256_loadu_ps(x + k + 16), a2);
            a3 = _mm256_fmadd_ps(widen8(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(x + k + 24), a3);
        }
        y[n] = sum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) * scale[n] + (bias ? bias[n] : 0.0f);
    }
}

/* The rows split evenly over `threads` OpenMP threads. */
void int8_matvec(const int8_t *w, const float *scale, const float *bias, const float *x, int64_t k_len, int64_t n_len, float *y,
                 int threads) {
    #pragma omp parallel num_threads(threads)
    {
        int64_t t = 0, count = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        count = omp_get_num_threads();
#endif
        int64_t chunk = (n_len + count - 1) / count, n0 = t * chunk, n1 = n0 + chunk < n_len ? n0 + chunk : n_len;
        if (n0 < n1) rows(w, scale, bias, x, k_len, n0, n1, y);
    }
}
