/* One row of input times int8 weights with a float32 scale per output row: the decode step of gptkit's int8
 * precision (gptkit/weight_formats.py), built by gptkit/native.py with the C compiler at first use.
 *
 * A decode step at batch 1 reads every weight once, so its speed is memory's, as long as the kernel keeps up:
 * torch's own int8 kernel does not on CPUs without AVX-512 (about 10 GB/s of weights where memory gives 17-18).
 * This one widens 8 weights at a time to float32 and multiplies them into four float32 accumulators (AVX2 + FMA),
 * the input staying float32: the same products as the weights widened to float32, up to the order of the sums.
 */
#include "int8_matvec.h"
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

/* Cephes' method: e^x = 2^n e^r with n = round(x / ln 2) and |r| <= ln(2) / 2, e^r by a degree-6 polynomial. */
__m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-87.3365478515625f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(pow2));
}

/* 0.5 x (1 + tanh(u)) with u = sqrt(2 / pi) (x + 0.044715 x^3) and 1 + tanh(u) = 2 - 2 / (e^{2u} + 1). */
static inline __m256 gelu8(__m256 x) {
    __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                             _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), x), _mm256_mul_ps(x, x), x));
    __m256 e = exp8(_mm256_add_ps(u, u));
    __m256 one_plus_tanh = _mm256_sub_ps(_mm256_set1_ps(2.0f), _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), one_plus_tanh);
}

static void activate(float *y, int64_t n, int act) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(y + i);
        if (act == ACT_GELU) {
            v = gelu8(v);
        } else {
            v = _mm256_max_ps(v, _mm256_setzero_ps());
            v = _mm256_mul_ps(v, v);
        }
        _mm256_storeu_ps(y + i, v);
    }
    if (i < n) {  /* the tail, through a padded vector */
        float tail[8] = {0};
        for (int64_t j = i; j < n; j++) tail[j - i] = y[j];
        activate(tail, 8, act);
        for (int64_t j = i; j < n; j++) y[j] = tail[j - i];
    }
}

static void int8_rows(const int8_t *w, const float *scale, const float *bias, const float *x, int64_t k_len, int64_t n0,
               int64_t n1, float *y, int act, int accumulate) {
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
        float v = sum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) * scale[n] + (bias ? bias[n] : 0.0f);
        y[n] = accumulate ? y[n] + v : v;
    }
    if (act != ACT_NONE) activate(y + n0, n1 - n0, act);
}

void int8_matvec_fused(const int8_t *w, const float *scale, const float *bias, const float *x, int64_t k_len, int64_t n_len,
                       float *y, int act, int accumulate, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        int64_t t = 0, count = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        count = omp_get_num_threads();
#endif
        /* chunks of whole 8-row vectors, for the activation */
        int64_t chunk = ((n_len + count - 1) / count + 7) / 8 * 8, n0 = t * chunk, n1 = n0 + chunk < n_len ? n0 + chunk : n_len;
        if (n0 < n1) int8_rows(w, scale, bias, x, k_len, n0, n1, y, act, accumulate);
    }
}

void int8_matvec(const int8_t *w, const float *scale, const float *bias, const float *x, int64_t k_len, int64_t n_len, float *y,
                 int threads) {
    int8_matvec_fused(w, scale, bias, x, k_len, n_len, y, ACT_NONE, 0, threads);
}
