/* adamw.c — the optimizer's update on the CPU (adamw.h). */
#include "train/adamw.h"

#include <math.h>

lasp_adamw_step lasp_adamw_make(const lasp_train_params *o, int64_t step, double lr) {
    lasp_adamw_step h;
    h.lr = (float)lr, h.beta1 = (float)o->beta1, h.beta2 = (float)o->beta2, h.eps = (float)o->eps;
    h.wd = (float)o->weight_decay;
    h.bc1 = (float)(1 - pow(o->beta1, (double)(step + 1)));
    h.bc2 = (float)(1 - pow(o->beta2, (double)(step + 1)));
    h.clip = o->clip;
    return h;
}

float lasp_adamw_clip_factor(double clip, double norm) {
    return clip > 0 && norm > clip ? (float)(clip / norm) : 1.0f;
}

void lasp_adamw_cpu(float *p, const float *g, float *m, float *v, const uint8_t *decay, size_t n,
                    const lasp_adamw_step *h, float clip_factor) {
    const float b1 = h->beta1, b2 = h->beta2;
    for (size_t i = 0; i < n; i++) {
        const float gi = g[i] * clip_factor;
        const float mi = b1 * m[i] + (1 - b1) * gi, vi = b2 * v[i] + (1 - b2) * gi * gi;
        m[i] = mi, v[i] = vi;
        const float upd = (mi / h->bc1) / (sqrtf(vi / h->bc2) + h->eps) + (decay[i] ? h->wd * p[i] : 0.0f);
        p[i] -= h->lr * upd;
    }
}
