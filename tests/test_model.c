/* test_model.c — the model's hand-written backward against central finite differences (tiny preset),
 * the recurrent decoder against the chunked forward, the BLAS products against the plain loops, and the
 * initial parameters (their spread per tensor, the same bytes on any number of threads). */
#include <math.h>
#include <string.h>

#include "core/rng.h"
#include "model/model.h"
#include "test.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static lasp_rng rng;
static lasp_ctx *ctx;

enum { B = 2, T = 24 };

static double loss_of(lasp_model *m, const int32_t *tok, const int32_t *tgt) {
    double loss = 0;
    lasp_status s = lasp_model_forward(m, ctx, NULL, tok, tgt, NULL, 0, &loss, NULL, NULL);
    CHECK(s == LASP_OK, "forward: %s", lasp_ctx_error(ctx));
    return loss;
}

/* Sampled parameters of every tensor: analytic gradient vs (L(p+ε) − L(p−ε)) / 2ε. The forward is
 * fp32, so the difference quotient carries ~1e-7·|L|/ε of rounding noise: weights are drawn larger
 * than at init (gradients of O(1e-2..1)), ε = 1e-2, and the metric is the relative error over all
 * sampled entries together. At that scale the quotient's own O(ε²) error reached 1e-2 for some
 * seeds, so it is extrapolated from ε and ε/2 (Richardson), at ε = 1e-2, 4e-3 and 1.6e-3, keeping
 * the estimate nearest the analytic value per entry (one step size alone failed 3 to 6 seeds in 40).
 * Over 100 seeds the overall error stayed below 2.6e-3; a gradient 2% off everywhere gives 2e-2, so
 * the thresholds (5e-3 overall, 1e-2 per tensor) separate the two. */
static void test_fd(int no_blas, int conv) {
    lasp_model_config c;
    lasp_err err = {0};
    CHECK(lasp_model_preset("tiny", 64, &c, &err) == LASP_OK, "%s", err.msg);
    c.conv = conv;
    lasp_model m;
    CHECK(lasp_model_create(&c, &m, &err) == LASP_OK, "%s", err.msg);
    CHECK(lasp_model_reserve(&m, B, T, &err) == LASP_OK, "%s", err.msg);
    m.no_blas = no_blas;
    const size_t P = m.lay.n_params;
    m.params = malloc(P * sizeof(float)), m.grads = calloc(P, sizeof(float));
    lasp_model_init_params(&c, &m.lay, lasp_rng_u64(&rng), m.params);
    for (size_t i = 0; i < P; i++)
        if (lasp_layout_decays(&m.lay, i)) m.params[i] *= 10.0f;  /* weights of std 0.2 */
        else m.params[i] += 0.3f * (float)lasp_rng_normal(&rng);   /* gains away from 1 */
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) tok[i] = (int32_t)lasp_rng_below(&rng, 64), tgt[i] = (int32_t)lasp_rng_below(&rng, 64);

    double loss;
    CHECK(lasp_model_forward(&m, ctx, NULL, tok, tgt, NULL, 1.0f, &loss, NULL, NULL) == LASP_OK, "%s",
          lasp_ctx_error(ctx));
    CHECK(lasp_model_backward(&m, ctx, NULL, tok) == LASP_OK, "%s", lasp_ctx_error(ctx));

    /* 12 entries from each tensor: embedding, every tensor of every block, final gain, head */
    const lasp_block_off *b = &m.lay.blk;
    size_t ranges[64][2];
    const char *names[64];
    int nr = 0;
    ranges[nr][0] = 0, ranges[nr][1] = m.lay.unit_off[1], names[nr++] = "wte";
    for (int l = 0; l < c.n_layers; l++) {
        const size_t o = m.lay.unit_off[1 + l];
        const size_t cuts[] = {b->ln1, b->wqkvu, b->conv, b->onorm, b->wo, b->ln2, b->w12, b->w3, b->size};
        static const char *nm[] = {"ln1", "wqkvu", "conv", "onorm", "wo", "ln2", "w12", "w3"};
        for (int i = 0; i < 8; i++)
            if (cuts[i + 1] > cuts[i]) ranges[nr][0] = o + cuts[i], ranges[nr][1] = o + cuts[i + 1], names[nr++] = nm[i];
    }
    const size_t oh = m.lay.unit_off[c.n_layers + 1];
    ranges[nr][0] = oh, ranges[nr][1] = oh + m.lay.head_w, names[nr++] = "lnf";
    ranges[nr][0] = oh + m.lay.head_w, ranges[nr][1] = P, names[nr++] = "head";

    const float eps = 1e-2f;
    double num = 0, den = 0, worst_t = 0;
    const char *worst_name = "";
    for (int r = 0; r < nr; r++) {
        double tn = 0, td = 0;
        for (int s = 0; s < 12; s++) {
            size_t i = ranges[r][0] + (size_t)lasp_rng_below(&rng, ranges[r][1] - ranges[r][0]);
            if (r == 0) i = (size_t)tok[s] * (size_t)c.d_model + (size_t)lasp_rng_below(&rng, (uint64_t)c.d_model);
            const float p0 = m.params[i];
            /* Richardson estimates at three step sizes; the one nearest the analytic value counts. A
             * large step suffers curvature where the scaled-up weights make the loss strongly
             * non-linear, a small one fp32 rounding; a wrong gradient disagrees with all three. */
            const double an = m.grads[i];
            double fd = 0;
            for (int e = 0; e < 3; e++) {
                const float he = eps * powf(0.4f, (float)e);
                double dq[2];  /* central differences at he and he/2 */
                for (int k = 0; k < 2; k++) {
                    const float h = k ? he / 2 : he;
                    m.params[i] = p0 + h;
                    const double lp = loss_of(&m, tok, tgt);
                    m.params[i] = p0 - h;
                    const double lm = loss_of(&m, tok, tgt);
                    dq[k] = (lp - lm) / (2.0 * h);
                }
                /* Richardson: the O(h²) curvature terms of the two quotients cancel */
                const double r = (4 * dq[1] - dq[0]) / 3;
                if (e == 0 || fabs(r - an) < fabs(fd - an)) fd = r;
            }
            m.params[i] = p0;
            tn += (fd - an) * (fd - an), td += an * an;
        }
        num += tn, den += td;
        const double te = sqrt(tn / (td + 1e-30));
        if (te > worst_t) worst_t = te, worst_name = names[r];
    }
    const double rel = sqrt(num / den);
    printf("# finite differences (%s, conv %d): relative error %.2e over all tensors, worst tensor %s %.2e\n",
           no_blas ? "loops" : "BLAS", conv, rel, worst_name, worst_t);
    CHECK(rel < 5e-3, "gradient relative error %.3e ≥ 5e-3", rel);
    CHECK(worst_t < 1e-2, "tensor %s: gradient relative error %.3e ≥ 1e-2", worst_name, worst_t);
    free(m.params), free(m.grads);
    lasp_model_free(&m);
    test_case("model gradients match central finite differences (tiny, %s, %s)", no_blas ? "plain loops" : "BLAS",
              conv ? "short convolution" : "no convolution");
}

/* The recurrent decoder feeds tokens one at a time; its logits must equal the chunked forward's. */
static void test_decoder(int conv) {
    lasp_model_config c;
    lasp_err err = {0};
    CHECK(lasp_model_preset("tiny", 256, &c, &err) == LASP_OK, "%s", err.msg);
    c.conv = conv;
    lasp_model m;
    CHECK(lasp_model_create(&c, &m, &err) == LASP_OK, "%s", err.msg);
    enum { TT = 150 };  /* more than two blocks of the chunked op */
    CHECK(lasp_model_reserve(&m, 1, TT, &err) == LASP_OK, "%s", err.msg);
    m.params = malloc(m.lay.n_params * sizeof(float));
    lasp_model_init_params(&c, &m.lay, lasp_rng_u64(&rng), m.params);
    for (size_t i = 0; i < m.lay.n_params; i++)
        if (lasp_layout_decays(&m.lay, i)) m.params[i] *= 5.0f;
    int32_t tok[TT];
    for (int i = 0; i < TT; i++) tok[i] = (int32_t)lasp_rng_below(&rng, 256);
    CHECK(lasp_model_forward(&m, ctx, NULL, tok, NULL, NULL, 0, NULL, NULL, NULL) == LASP_OK, "%s",
          lasp_ctx_error(ctx));
    lasp_decoder d;
    CHECK(lasp_decoder_create(&m, m.params, &d, &err) == LASP_OK, "%s", err.msg);
    double num = 0, den = 0;
    for (int t = 0; t < TT; t++) {
        lasp_decoder_step(&d, tok[t]);
        for (int v = 0; v < 256; v++) {
            const double r = m.logits[t * 256 + v], x = d.logits[v];
            num += (x - r) * (x - r), den += r * r;
        }
    }
    const double rel = sqrt(num / den);
    printf("# recurrent vs chunked logits over %d tokens (conv %d): relative error %.2e\n", TT, conv, rel);
    CHECK(rel < 1e-4, "recurrent decoder differs from the forward: %.3e", rel);
    lasp_decoder_free(&d);
    free(m.params);
    lasp_model_free(&m);
    test_case("recurrent decoding equals the chunked forward (%s)",
              conv ? "the convolution's window rolls" : "no convolution");
}

/* The init draws blocks of parameters in parallel: 1 and 3 threads must give the same bytes. Per tensor, the
 * gains are exactly 1 and the rest have mean 0 and the sd of docs/MODEL.md, within 6 standard errors of a
 * sample of n (sd: 1/√(2n) relative). The vocab is large enough for several blocks whose tensors straddle. */
static void test_init(int conv) {
    lasp_model_config c;
    lasp_err err = {0};
    CHECK(lasp_model_preset("tiny", 4096, &c, &err) == LASP_OK, "%s", err.msg);
    c.conv = conv;
    lasp_layout l;
    CHECK(lasp_layout_make(&c, &l, &err) == LASP_OK, "%s", err.msg);
    const size_t P = l.n_params, C = (size_t)c.d_model, F = (size_t)c.ffn_dim, V = (size_t)c.vocab;
    float *a = malloc(P * sizeof(float)), *b = malloc(P * sizeof(float));
    const uint64_t seed = lasp_rng_u64(&rng);
#ifdef _OPENMP
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
#endif
    lasp_model_init_params(&c, &l, seed, a);
#ifdef _OPENMP
    omp_set_num_threads(3);
#endif
    lasp_model_init_params(&c, &l, seed, b);
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    CHECK(!memcmp(a, b, P * sizeof(float)), "1 and 3 threads give different initial parameters");
    lasp_model_init_params(&c, &l, seed + 1, b);
    CHECK(memcmp(a, b, P * sizeof(float)), "seeds %llu and %llu give the same initial parameters",
          (unsigned long long)seed, (unsigned long long)seed + 1);

    struct {
        const char *name;
        size_t at, n;
        double sd;  /* 0: a gain, all ones */
    } t[64];
    int nt = 0;
    const double sd_out = 0.02 / sqrt(2.0 * c.n_layers), sd_conv = conv ? 1.0 / sqrt(conv) : 0;
    t[nt].name = "embedding", t[nt].at = 0, t[nt].n = V * C, t[nt++].sd = 0.02;
    for (int k = 0; k < c.n_layers; k++) {
        const size_t o = l.unit_off[1 + k];
        const lasp_block_off *bo = &l.blk;
        t[nt].name = "ln1", t[nt].at = o + bo->ln1, t[nt].n = C, t[nt++].sd = 0;
        t[nt].name = "wqkvu", t[nt].at = o + bo->wqkvu, t[nt].n = 4 * C * C, t[nt++].sd = 0.02;
        if (conv) t[nt].name = "conv", t[nt].at = o + bo->conv, t[nt].n = (size_t)conv * 3 * C, t[nt++].sd = sd_conv;
        t[nt].name = "onorm", t[nt].at = o + bo->onorm, t[nt].n = C, t[nt++].sd = 0;
        t[nt].name = "wo", t[nt].at = o + bo->wo, t[nt].n = C * C, t[nt++].sd = sd_out;
        t[nt].name = "ln2", t[nt].at = o + bo->ln2, t[nt].n = C, t[nt++].sd = 0;
        t[nt].name = "w12", t[nt].at = o + bo->w12, t[nt].n = 2 * F * C, t[nt++].sd = 0.02;
        t[nt].name = "w3", t[nt].at = o + bo->w3, t[nt].n = F * C, t[nt++].sd = sd_out;
    }
    const size_t h = l.unit_off[c.n_layers + 1];
    t[nt].name = "final gain", t[nt].at = h + l.head_lnf, t[nt].n = C, t[nt++].sd = 0;
    t[nt].name = "head", t[nt].at = h + l.head_w, t[nt].n = C * V, t[nt++].sd = 0.02;
    size_t covered = 0;
    for (int i = 0; i < nt; i++) {
        const float *x = a + t[i].at;
        covered += t[i].n;
        if (t[i].sd == 0) {
            size_t ones = 0;
            for (size_t j = 0; j < t[i].n; j++) ones += x[j] == 1.0f;
            CHECK(ones == t[i].n, "%s: %zu of %zu are not 1", t[i].name, t[i].n - ones, t[i].n);
            continue;
        }
        double s1 = 0, s2 = 0;
        for (size_t j = 0; j < t[i].n; j++) s1 += x[j], s2 += (double)x[j] * x[j];
        const double n = (double)t[i].n, mean = s1 / n, sd = sqrt(s2 / n - mean * mean);
        CHECK(fabs(mean) < 6 * t[i].sd / sqrt(n), "%s (at %zu): mean %.3g, sd %.3g", t[i].name, t[i].at, mean, t[i].sd);
        CHECK(fabs(sd / t[i].sd - 1) < 6 / sqrt(2 * n), "%s (at %zu): sd %.4g, want %.4g", t[i].name, t[i].at, sd,
              t[i].sd);
    }
    CHECK(covered == P, "the tensors cover %zu of %zu parameters", covered, P);
    free(a), free(b);
    lasp_layout_free(&l);
    test_case("initial parameters: the sd of each tensor, gains 1, the same on 1 and 3 threads (%s)",
              conv ? "convolution" : "no convolution");
}

static void test_bad(void) {
    lasp_model_config c;
    lasp_err err = {0};
    CHECK(lasp_model_preset("huge", 256, &c, &err) == LASP_ERR_ARG, "unknown preset accepted");
    CHECK(strstr(err.msg, "tiny") != NULL, "no hint in '%s'", err.msg);
    c = (lasp_model_config){256, 48, 2, 2, 64, 4};  /* head dim 24 */
    CHECK(lasp_model_config_check(&c, &err) == LASP_ERR_UNSUPPORTED, "head dim 24 accepted");
    c = (lasp_model_config){256, 32, 2, 2, 64, 1};  /* a one-tap "convolution" mixes nothing */
    CHECK(lasp_model_config_check(&c, &err) == LASP_ERR_ARG, "conv 1 accepted");
    test_case("bad model configs are refused with a hint");
}

int main(void) {
    lasp_rng_seed(&rng, test_seed());
    lasp_ctx_params p = lasp_ctx_default_params();
    if (lasp_ctx_create(&p, &ctx) != LASP_OK) return 1;
    test_fd(0, 4);
    test_fd(0, 0);
#ifdef LASP_HAVE_BLAS
    test_fd(1, 4);
#endif
    test_decoder(4);
    test_decoder(0);
    test_init(4);
    test_init(0);
    test_bad();
    lasp_ctx_free(ctx);
    return test_exit();
}
