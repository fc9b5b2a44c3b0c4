/* One token through a whole int8 GPT (gptkit/native_decode.py fills the structures): the decode step at batch 1,
 * in one call, where PyTorch would run ~300 operations of a few microseconds each around the weight products.
 *
 * Per block: norm, query/key/value product, the new key and value written into the KV cache at `pos`, attention of
 * the one query over positions 0..pos, output product added to the residual, norm, MLP products (the activation and the
 * residual add fused into them). The products read the int8 weights (int8_matvec.c); everything else is float32,
 * as in the PyTorch model: the same numbers up to the order of sums and the exp and tanh approximations.
 */
#include <math.h>
#include <string.h>
#include "int8_matvec.h"

typedef struct {  /* an Int8WeightLinear: y = scale * (w x) + bias, w (n, k) int8 */
    const int8_t *w;
    const float *scale, *bias;  /* bias may be NULL */
    int64_t n, k;
} Linear;

typedef struct {
    const float *norm1_w, *norm1_b, *norm2_w, *norm2_b;  /* the biases NULL for RMSNorm or bias=False */
    Linear qkv, attn_out, fc, mlp_out;
    float *k_cache, *v_cache;  /* (H, slots, D): this layer's buffers of a batch-1 KVCache */
} Layer;

typedef struct {
    int64_t n_layer, n_head, n_embd, slots;  /* slots: positions each cache buffer holds */
    int64_t rmsnorm, relu2, qk_norm, rope;  /* the architecture (model.py's GPTConfig) */
    double norm_eps, qk_eps;
    const float *wte;  /* (V, C) token embeddings */
    const float *pos_add;  /* (block_size, C) added to the embedding (learned or sinusoidal), or NULL */
    const float *rope_cos, *rope_sin;  /* (block_size, D/2) each, or NULL */
    const float *final_w, *final_b;
    Linear head;
    Layer *layers;
    float *work;  /* scratch: 2C + 3C + C + 4C + H * slots floats */
} Model;

static void run_rows(const Linear *l, const float *x, float *y, int act, int accumulate, int threads) {
    int8_matvec_fused(l->w, l->scale, l->bias, x, l->k, l->n, y, act, accumulate, threads);
}

static void normalize(const float *x, float *out, int64_t n, const float *w, const float *b, int rms, double eps) {
    double mean = 0.0, var = 0.0;
    if (!rms) {
        for (int64_t i = 0; i < n; i++) mean += x[i];
        mean /= n;
    }
    for (int64_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float inv = (float)(1.0 / sqrt(var / n + eps)), m = (float)mean;
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] - m) * inv * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
}

static void rotate(float *x, const float *cos, const float *sin, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = a * sin[i] + b * cos[i];
    }
}

static inline float dot(const float *a, const float *b, int64_t n) {  /* n a multiple of 8 */
    __m256 s = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

/* Each head's query against the keys at 0..pos (this step's included), softmax, the weighted sum of the values. */
static void attend(const Model *m, const Layer *l, float *qkv, float *out, int64_t pos, int threads) {
    int64_t H = m->n_head, C = m->n_embd, D = C / H, span = pos + 1;
    float scale = 1.0f / sqrtf((float)D);
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t h = 0; h < H; h++) {
        float *q = qkv + h * D, *k = qkv + C + h * D, *v = qkv + 2 * C + h * D;
        if (m->qk_norm) {
            normalize(q, q, D, NULL, NULL, 1, m->qk_eps);
            normalize(k, k, D, NULL, NULL, 1, m->qk_eps);
        }
        if (m->rope) {
            rotate(q, m->rope_cos + pos * (D / 2), m->rope_sin + pos * (D / 2), D / 2);
            rotate(k, m->rope_cos + pos * (D / 2), m->rope_sin + pos * (D / 2), D / 2);
        }
        float *keys = l->k_cache + h * m->slots * D, *values = l->v_cache + h * m->slots * D;
        memcpy(keys + pos * D, k, D * sizeof(float));
        memcpy(values + pos * D, v, D * sizeof(float));
        float *p = m->work + 10 * C + h * m->slots, top = -INFINITY, total = 0.0f;
        for (int64_t t = 0; t < span; t++) {
            p[t] = dot(q, keys + t * D, D) * scale;
            top = p[t] > top ? p[t] : top;
        }
        int64_t t = 0;
        __m256 sums = _mm256_setzero_ps();
        for (; t + 8 <= span; t += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + t), _mm256_set1_ps(top)));
            _mm256_storeu_ps(p + t, e);
            sums = _mm256_add_ps(sums, e);
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, sums);
        for (int i = 0; i < 8; i++) total += lanes[i];
        for (; t < span; t++) total += (p[t] = expf(p[t] - top));
        float *y = out + h * D;
        for (int64_t d = 0; d < D; d += 8) {
            __m256 acc = _mm256_setzero_ps();
            for (int64_t s = 0; s < span; s++) acc = _mm256_fmadd_ps(_mm256_set1_ps(p[s]), _mm256_loadu_ps(values + s * D + d), acc);
            _mm256_storeu_ps(y + d, _mm256_mul_ps(acc, _mm256_set1_ps(1.0f / total)));
        }
    }
}

/* logits (V) of the token after `token`, at position `pos`: the cache then holds positions 0..pos. */
void decode_step(const Model *m, int64_t token, int64_t pos, float *logits, int threads) {
    int64_t C = m->n_embd;
    float *x = m->work, *h = x + C, *qkv = h + C, *att = qkv + 3 * C, *f = att + C;
    for (int64_t i = 0; i < C; i++) x[i] = m->wte[token * C + i] + (m->pos_add ? m->pos_add[pos * C + i] : 0.0f);
    for (int64_t i = 0; i < m->n_layer; i++) {
        const Layer *l = &m->layers[i];
        normalize(x, h, C, l->norm1_w, l->norm1_b, (int)m->rmsnorm, m->norm_eps);
        run_rows(&l->qkv, h, qkv, ACT_NONE, 0, threads);
        attend(m, l, qkv, att, pos, threads);
        run_rows(&l->attn_out, att, x, ACT_NONE, 1, threads);
        normalize(x, h, C, l->norm2_w, l->norm2_b, (int)m->rmsnorm, m->norm_eps);
        run_rows(&l->fc, h, f, m->relu2 ? ACT_RELU2 : ACT_GELU, 0, threads);
        run_rows(&l->mlp_out, f, x, ACT_NONE, 1, threads);
    }
    normalize(x, h, C, m->final_w, m->final_b, (int)m->rmsnorm, m->norm_eps);
    run_rows(&m->head, h, logits, ACT_NONE, 0, threads);
}
