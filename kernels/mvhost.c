/* Host-side motion-vector field at the codec's speed (issue #30): the per-frame work of
 * runtime/motion_vectors.py (resolving which past frame each vector references, rasterising the blocks
 * onto the 4-px unit grid) and of runtime/sources.py's Fitter.fit_field, as plain loops over blocks.
 *
 * Why C: numpy's per-call overhead (a few microseconds each, about a hundred calls per frame) made the field
 * cost 1-2.5x the codec's own decode. Every function here repeats its numpy twin's arithmetic in the same order
 * and precision (float64 sums in stream order, float32 where numpy computes in float32), so the two give
 * bit-identical fields; tests/kernels/test_mvhost.py holds them to that on real clips. Build with
 * `python -m kernels.build` (-O2 -ffp-contract=off: no fused multiply-adds, which would change roundings).
 * No state: the Python side keeps the ring of past lumas and the previous field and passes them in.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Hot loops get an AVX2 clone beside the baseline one, picked when the library loads (GNU ifunc): the same IEEE
 * operations on wider vectors (no FMA: -ffp-contract=off), so the results are bit-identical on either path. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define WIDE __attribute__((target_clones("avx2", "default")))
#else
#define WIDE
#endif
#define PREFETCH 16 /* blocks ahead whose past pixels block matching fetches early */

#define UNIT 4
#define POINTS 4
#define TIE 1.0
#define MIN_PAIRS 8
#define MAX_DISAGREE 1.0
#define MAX_COST 40.0

/* Field offsets of an AVMotionVector record: source, w, h, dst_x, dst_y, motion_x, motion_y, motion_scale. */
typedef struct {
    const uint8_t *base;
    int64_t size;
    const int64_t *off;
} Recs;

static int32_t r_source(const Recs *r, int64_t i) { int32_t v; memcpy(&v, r->base + i * r->size + r->off[0], 4); return v; }
static int64_t r_w(const Recs *r, int64_t i) { return r->base[i * r->size + r->off[1]]; }
static int64_t r_h(const Recs *r, int64_t i) { return r->base[i * r->size + r->off[2]]; }
static int64_t r_i16(const Recs *r, int64_t i, int k) { int16_t v; memcpy(&v, r->base + i * r->size + r->off[k], 2); return v; }
static int64_t r_dx(const Recs *r, int64_t i) { return r_i16(r, i, 3); }
static int64_t r_dy(const Recs *r, int64_t i) { return r_i16(r, i, 4); }
static int32_t r_i32(const Recs *r, int64_t i, int k) { int32_t v; memcpy(&v, r->base + i * r->size + r->off[k], 4); return v; }
static double r_scale(const Recs *r, int64_t i) {
    uint16_t v; memcpy(&v, r->base + i * r->size + r->off[7], 2);
    return v > 1 ? (double)v : 1.0;
}

static int64_t floordiv(int64_t a, int64_t b) { int64_t q = a / b; return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q; }
static int64_t imod(int64_t a, int64_t b) { int64_t m = a % b; return m < 0 ? m + b : m; }
static int64_t clampi(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }
static int64_t gcd64(int64_t a, int64_t b) { a = a < 0 ? -a : a; b = b < 0 ? -b : b; while (b) { int64_t t = a % b; a = b; b = t; } return a; }

/* ------------------------------------------------------------------ open-addressing map int64 key -> int64 */
typedef struct { int64_t *keys; int64_t *vals; uint8_t *used; int64_t cap; int shift; } Map;

static int map_init(Map *m, int64_t n) {
    m->cap = 16;
    m->shift = 60;
    while (m->cap < 2 * n + 2) { m->cap <<= 1; m->shift--; }
    m->keys = malloc(m->cap * sizeof(int64_t));
    m->vals = malloc(m->cap * sizeof(int64_t));
    m->used = calloc(m->cap, 1);
    return m->keys && m->vals && m->used;
}
static void map_free(Map *m) { free(m->keys); free(m->vals); free(m->used); }
static int64_t map_slot(const Map *m, int64_t key) {
    /* Fibonacci hashing: the product's top bits mix every bit of the key (its low bits, which the keys' block
     * sizes and 8-px aligned positions leave nearly constant, made probe chains hundreds long) */
    uint64_t h = (uint64_t)key * 0x9E3779B97F4A7C15ull;
    int64_t s = (int64_t)(h >> m->shift);
    while (m->used[s] && m->keys[s] != key) s = (s + 1) & (m->cap - 1);
    return s;
}

/* ------------------------------------------------------------------ inter fraction (_inter_fraction) */
static double inter_fraction(const Recs *r, int64_t n, int64_t height, int64_t width, int *err) {
    Map m;
    if (!map_init(&m, n)) { *err = 1; map_free(&m); return 0.0; }
    int64_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t bw = r_w(r, i), bh = r_h(r, i);
        int64_t x0 = r_dx(r, i) - bw / 2, y0 = r_dy(r, i) - bh / 2;
        int64_t key = ((x0 + 64) * 65536 + y0 + 64) * 4096 + bw * 64 + bh;
        int64_t s = map_slot(&m, key);
        if (m.used[s]) continue; /* each block once: its first occurrence */
        m.used[s] = 1; m.keys[s] = key;
        int64_t cw = clampi(x0 + bw, 0, width) - clampi(x0, 0, width);
        int64_t ch = clampi(y0 + bh, 0, height) - clampi(y0, 0, height);
        total += cw * ch;
    }
    map_free(&m);
    double f = (double)total / (double)(height * width > 1 ? height * width : 1);
    return f < 1.0 ? f : 1.0;
}

/* ------------------------------------------------------------------ median (numpy's: mean of the middle two) */
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *v, int64_t n) {
    qsort(v, n, sizeof(double), cmp_double);
    if (n % 2) return v[n / 2];
    return (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

/* How far ahead backward vectors reach, from forward displacements of the same blocks (_ahead). ``d`` float64
 * (dp == NULL) or float32 (dp != NULL, NaN where unknown). Returns 0 for "None". */
static int64_t ahead_of(const double *w0, const double *w1, const double *d0, const double *d1, const float *dp,
                        int64_t n, int64_t stride_dp, double *scratch) {
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        double num, den;
        if (dp) {
            float a = dp[i], b = dp[stride_dp + i];
            if (!isfinite(a) || !isfinite(b)) continue;
            float s2 = a * a + b * b;
            if (!(s2 >= 0.0625f)) continue;
            num = -(w0[i] * (double)a + w1[i] * (double)b);
            den = (double)s2;
        } else {
            double a = d0[i], b = d1[i];
            if (!isfinite(a) || !isfinite(b)) continue;
            double s2 = a * a + b * b;
            if (!(s2 >= 0.0625)) continue;
            num = -(w0[i] * a + w1[i] * b);
            den = s2;
        }
        scratch[k++] = num / den;
    }
    if (k < MIN_PAIRS) return 0;
    return (int64_t)rint(median(scratch, k));
}

static int any_set(const uint8_t *m, int64_t n) {
    for (int64_t i = 0; i < n; i++) if (m[i]) return 1;
    return 0;
}

/* ------------------------------------------------------------------ resolve one frame's vectors
 * rec/n/isz/off: the frame's AVMotionVector records. y (h, w, row stride ys): its luma. ring (window, h, w): past
 * lumas, display index i in slot i % window, newest ``last``; n_cand: how many to match (0: none). span > 0: an
 * anchored codec, every forward vector spans ``span`` frames. allowed (n_cand) or NULL: 0 where span k + 1 cannot be
 * a reference (decoded later, or not a reference picture): not weighed (numpy: an infinite cost). pdisp (2, puh,
 * puw) / pcov (puh, puw): the previous frame's unit field, or NULL. Writes the kept vectors' indices (forward ones first, then backward-only ones) and
 * their motion (2, n) in px per frame; facts = {inter, sum of spans, number of spans}. Returns the count, -1 on
 * an allocation failure. */
int64_t mvh_resolve(const uint8_t *rec, int64_t n, int64_t isz, const int64_t *off, const uint8_t *y, int64_t h,
                    int64_t w, int64_t ys, const uint8_t *ring, int64_t window, int64_t last, int64_t n_cand,
                    int64_t span, const uint8_t *allowed, const float *pdisp, const float *pcov, int64_t puh,
                    int64_t puw, int64_t *idx, double *motion, double *facts) {
    Recs r = {rec, isz, off};
    int err = 0;
    facts[0] = inter_fraction(&r, n, h, w, &err);
    facts[1] = facts[2] = 0.0;
    if (err) return -1;
    int64_t nf = 0, nb = 0;
    int64_t *fwd = malloc((n + 1) * sizeof(int64_t)), *bwd = malloc((n + 1) * sizeof(int64_t));
    double *mx = malloc((2 * n + 2) * sizeof(double)), *my = mx + n + 1;
    int64_t *spans = malloc((n + 1) * sizeof(int64_t));
    double *scratch = NULL;
    int64_t *best = NULL;
    int64_t out = -1;
    if (!fwd || !bwd || !mx || !spans) goto done;
    for (int64_t i = 0; i < n; i++) {
        int32_t s = r_source(&r, i);
        if (s < 0) fwd[nf++] = i;
        else if (s > 0) bwd[nb++] = i;
    }
    for (int64_t j = 0; j < nf; j++) {
        double sc = r_scale(&r, fwd[j]);
        mx[j] = (double)r_i32(&r, fwd[j], 5) / sc;
        my[j] = (double)r_i32(&r, fwd[j], 6) / sc;
        spans[j] = 1;
    }
    /* _spans: which past frame each forward vector references */
    int64_t nk = nf; /* kept forward vectors, compacted in place (fwd, mx, my, spans) */
    if (span > 0 && nf) {
        for (int64_t j = 0; j < nf; j++) { spans[j] = span; mx[j] /= (double)span; my[j] /= (double)span; }
    } else if (n_cand > 0 && nf && allowed && !any_set(allowed, n_cand < 64 ? n_cand : 64)) {
        nk = 0; /* no candidate can be a reference: no forward vector is explained (numpy: every cost infinite) */
    } else if (n_cand > 0 && nf) {
        if (n_cand > 64) n_cand = 64; /* HISTORY is 16 */
        /* the candidates weighed, newest first: span ks[a] + 1 (those ``allowed`` names; all when it is NULL) */
        int64_t ks[64], na = 0;
        for (int64_t k = 0; k < n_cand; k++) if (!allowed || allowed[k]) ks[na++] = k;
        /* costs as sums of POINTS x POINTS absolute differences (<= 4080): the mean is sum / 16 exactly, so comparing
         * sums against TIE and MAX_COST scaled by 16 decides as comparing the numpy twin's float64 means does */
        const int64_t tie = (int64_t)(TIE * POINTS * POINTS), max_cost = (int64_t)(MAX_COST * POINTS * POINTS);
        uint16_t *cs = malloc(nf * na * sizeof(uint16_t));
        best = malloc(nf * sizeof(int64_t));
        uint8_t *clear = malloc(nf);
        int64_t *votes = calloc(na, sizeof(int64_t));
        if (!cs || !best || !clear || !votes) { free(cs); free(clear); free(votes); goto done; }
        static const double F[POINTS] = {0.125, 0.375, 0.625, 0.875};
        const uint8_t *pasts[64];
        for (int64_t a = 0; a < na; a++) pasts[a] = ring + imod(last - ks[a], window) * h * w;
        int64_t any_clear = 0;
        /* each block's points in this picture and where its vector puts them, then one candidate frame at a time
         * over all blocks (a frame's luma stays in cache; block by block all 16 would be read at once) */
        uint8_t *cur = malloc(nf * POINTS * POINTS);
        int32_t *at = malloc(nf * POINTS * POINTS * sizeof(int32_t));
        if (!cur || !at) { free(cur); free(at); free(cs); free(clear); free(votes); goto done; }
        for (int64_t j = 0; j < nf; j++) {
#if defined(__GNUC__)
            if (j + PREFETCH < nf) { /* this picture's rows a block further on reads (its first and third point rows) */
                int64_t k = fwd[j + PREFETCH], kh = r_h(&r, k);
                int64_t kx = clampi(r_dx(&r, k), 0, w - 1), ky = r_dy(&r, k) - kh / 2;
                __builtin_prefetch(y + clampi(ky + kh / 8, 0, h - 1) * ys + kx, 0, 0);
                __builtin_prefetch(y + clampi(ky + kh * 5 / 8, 0, h - 1) * ys + kx, 0, 0);
            }
#endif
            int64_t bw = r_w(&r, fwd[j]), bh = r_h(&r, fwd[j]);
            int64_t x0 = r_dx(&r, fwd[j]) - bw / 2, y0 = r_dy(&r, fwd[j]) - bh / 2;
            int64_t ddx = (int64_t)rint(mx[j]), ddy = (int64_t)rint(my[j]);
            int64_t px[POINTS], py[POINTS];
            for (int p = 0; p < POINTS; p++) { px[p] = x0 + (int64_t)(F[p] * (double)bw); py[p] = y0 + (int64_t)(F[p] * (double)bh); }
            uint8_t *cj = cur + j * POINTS * POINTS;
            int32_t *aj = at + j * POINTS * POINTS;
            for (int a = 0; a < POINTS; a++)
                for (int b = 0; b < POINTS; b++) {
                    cj[a * POINTS + b] = y[clampi(py[a], 0, h - 1) * ys + clampi(px[b], 0, w - 1)];
                    aj[a * POINTS + b] = (int32_t)(clampi(py[a] + ddy, 0, h - 1) * w + clampi(px[b] + ddx, 0, w - 1));
                }
        }
        for (int64_t a = 0; a < na; a++) {
            const uint8_t *past = pasts[a];
            for (int64_t j = 0; j < nf; j++) {
                const uint8_t *cj = cur + j * POINTS * POINTS;
                const int32_t *aj = at + j * POINTS * POINTS;
#if defined(__GNUC__)
                if (j + PREFETCH < nf) { /* the rows a block further on reads: their misses overlap this block's */
                    const int32_t *ak = aj + PREFETCH * POINTS * POINTS;
                    for (int r = 0; r < POINTS; r++) __builtin_prefetch(past + ak[r * POINTS], 0, 0);
                }
#endif
                unsigned sum = 0;
                for (int p = 0; p < POINTS * POINTS; p++) {
                    int d = (int)past[aj[p]] - (int)cj[p];
                    sum += (unsigned)(d < 0 ? -d : d);
                }
                cs[j * na + a] = (uint16_t)sum;
            }
        }
        free(cur);
        free(at);
        /* each block's best candidate, and whether its pixels tell the two best apart (by more than TIE) */
        for (int64_t j = 0; j < nf; j++) {
            const uint16_t *c = cs + j * na;
            int64_t b0 = 0, lo1 = 1 << 30, lo2 = 1 << 30;
            for (int64_t a = 0; a < na; a++) {
                if (c[a] < c[b0]) b0 = a;
                if (c[a] < lo1) { lo2 = lo1; lo1 = c[a]; }
                else if (c[a] < lo2) lo2 = c[a];
            }
            best[j] = b0;
            clear[j] = na > 1 ? lo2 - lo1 > tie : 1;
            any_clear |= clear[j];
        }
        /* the frame's usual reference: the span most clearly matched blocks chose */
        for (int64_t j = 0; j < nf; j++) if (clear[j] || !any_clear) votes[best[j]]++;
        int64_t usual = 0;
        for (int64_t a = 1; a < na; a++) if (votes[a] > votes[usual]) usual = a;
        free(votes);
        free(clear);
        nk = 0;
        for (int64_t j = 0; j < nf; j++) {
            const uint16_t *c = cs + j * na;
            int64_t b = (int64_t)c[usual] <= (int64_t)c[best[j]] + tie ? usual : best[j];
            if (!((int64_t)c[b] <= max_cost)) continue;
            int64_t sp = ks[b] + 1;
            fwd[nk] = fwd[j];
            spans[nk] = sp;
            mx[nk] = mx[j] / (double)sp;
            my[nk] = my[j] / (double)sp;
            nk++;
        }
        free(cs);
    }
    for (int64_t j = 0; j < nk; j++) facts[1] += (double)spans[j];
    facts[2] = (double)nk;
    /* _backward: backward-only blocks of a B picture at constant velocity */
    int64_t n_only = 0, n_agree = nk;
    uint8_t *agree = NULL;
    int64_t *only_idx = NULL;
    double *om0 = NULL, *om1 = NULL;
    if (nb && nk) {
        Map m;
        int64_t *pair = malloc(nb * sizeof(int64_t));
        double *w0 = malloc(6 * nb * sizeof(double)), *w1 = w0 + nb, *d0 = w1 + nb, *d1 = d0 + nb, *ahead = d1 + nb,
               *gap = ahead + nb;
        scratch = malloc((nb + 1) * sizeof(double));
        float *dp = NULL;
        agree = malloc(nk);
        only_idx = malloc(nb * sizeof(int64_t));
        om0 = malloc(2 * nb * sizeof(double));
        if (!map_init(&m, nk) || !pair || !w0 || !scratch || !agree || !only_idx || !om0) {
            map_free(&m); free(pair); free(w0); free(agree); free(only_idx); free(om0);
            goto done;
        }
        om1 = om0 + nb;
        for (int64_t j = 0; j < nk; j++) { /* key -> the last kept forward block with it */
            int64_t i = fwd[j];
            int64_t key = ((r_dx(&r, i) + 32768) << 32) | ((r_dy(&r, i) + 32768) << 16) | (r_w(&r, i) << 8) | r_h(&r, i);
            int64_t s = map_slot(&m, key);
            m.used[s] = 1; m.keys[s] = key; m.vals[s] = j;
        }
        int64_t nboth = 0;
        for (int64_t j = 0; j < nb; j++) {
            int64_t i = bwd[j];
            int64_t key = ((r_dx(&r, i) + 32768) << 32) | ((r_dy(&r, i) + 32768) << 16) | (r_w(&r, i) << 8) | r_h(&r, i);
            int64_t s = map_slot(&m, key);
            pair[j] = m.used[s] ? m.vals[s] : -1;
            double sc = r_scale(&r, i);
            w0[j] = (double)r_i32(&r, i, 5) / sc;
            w1[j] = (double)r_i32(&r, i, 6) / sc;
        }
        map_free(&m);
        /* the bi-predicted blocks: their two vectors (compacted into d0/d1 as forward displacement, w as ahead/gap) */
        double *bw0 = ahead, *bw1 = gap; /* temporarily: the backward vectors of the bi-predicted blocks */
        for (int64_t j = 0; j < nb; j++)
            if (pair[j] >= 0) { d0[nboth] = mx[pair[j]]; d1[nboth] = my[pair[j]]; bw0[nboth] = w0[j]; bw1[nboth] = w1[j]; nboth++; }
        int64_t mm = ahead_of(bw0, bw1, d0, d1, NULL, nboth, 0, scratch);
        if (pdisp && pcov) {
            dp = malloc(2 * nb * sizeof(float));
            if (!dp) { free(pair); free(w0); free(agree); free(only_idx); free(om0); goto done; }
            for (int64_t j = 0; j < nb; j++) {
                double x = (double)r_dx(&r, bwd[j]), yy = (double)r_dy(&r, bwd[j]);
                int64_t cx = clampi((int64_t)floor(x / UNIT), 0, puw - 1), cy = clampi((int64_t)floor(yy / UNIT), 0, puh - 1);
                int64_t c = cy * puw + cx;
                if (pcov[c] <= 0.0f) { dp[j] = NAN; dp[nb + j] = NAN; }
                else { dp[j] = pdisp[c] * (float)UNIT; dp[nb + j] = pdisp[puh * puw + c] * (float)UNIT; }
            }
        }
        if ((mm < 1 || mm > window) && dp) mm = ahead_of(w0, w1, NULL, NULL, dp, nb, nb, scratch);
        if (mm >= 1 && mm <= window) {
            for (int64_t j = 0; j < nb; j++) {
                ahead[j] = (double)mm;
                if (dp) {
                    float a = isnan(dp[j]) ? 0.0f : dp[j], b = isnan(dp[nb + j]) ? 0.0f : dp[nb + j];
                    float speed = a * a + b * b;
                    float den = speed > 1e-9f ? speed : 1e-9f;
                    double own = rint(-(w0[j] * (double)a + w1[j] * (double)b) / (double)den);
                    if (speed >= 0.25f && own >= 1.0 && own <= (double)window) ahead[j] = own;
                }
            }
            memset(agree, 1, nk);
            for (int64_t j = 0; j < nb; j++) {
                if (pair[j] < 0) continue;
                double g0 = fabs(mx[pair[j]] + w0[j] / (double)mm), g1 = fabs(my[pair[j]] + w1[j] / (double)mm);
                if ((g0 > g1 ? g0 : g1) > MAX_DISAGREE) agree[pair[j]] = 0;
            }
            n_agree = 0;
            for (int64_t j = 0; j < nk; j++) n_agree += agree[j];
            for (int64_t j = 0; j < nb; j++)
                if (pair[j] < 0) {
                    only_idx[n_only] = bwd[j];
                    om0[n_only] = -w0[j] / ahead[j];
                    om1[n_only] = -w1[j] / ahead[j];
                    n_only++;
                }
        } else {
            free(agree);
            agree = NULL;
        }
        free(dp); free(pair); free(w0);
    }
    out = 0;
    for (int64_t j = 0; j < nk; j++) {
        if (agree && !agree[j]) continue;
        idx[out] = fwd[j];
        motion[out] = mx[j];
        out++;
    }
    int64_t nout = n_agree + n_only;
    out = 0;
    for (int64_t j = 0; j < nk; j++) {
        if (agree && !agree[j]) continue;
        motion[nout + out] = my[j];
        out++;
    }
    for (int64_t j = 0; j < n_only; j++) {
        idx[out + j] = only_idx[j];
        motion[out + j] = om0[j];
        motion[nout + out + j] = om1[j];
    }
    out = nout;
    free(agree); free(only_idx); free(om0);
done:
    free(fwd); free(bwd); free(mx); free(spans); free(best); free(scratch);
    return out;
}

/* ------------------------------------------------------------------ rasterise onto the 4-px unit grid
 * (grid_blocks at stride UNIT): area-weighted mean displacement per unit in feature px (disp (2, uh, uw) float32)
 * and the covered count (cov (uh, uw) float32), 0 outside the ph x pw picture. motion (2, n) px. */
static int cmp_order(const void *a, const void *b) {
    const int64_t *x = a, *y = b;
    return x[0] != y[0] ? (x[0] > y[0]) - (x[0] < y[0]) : (x[1] > y[1]) - (x[1] < y[1]);
}

int64_t mvh_grid_unit(const uint8_t *rec, const int64_t *idx, int64_t n, int64_t isz, const int64_t *off,
                      const double *motion, int64_t uh, int64_t uw, int64_t ph, int64_t pw, float *disp, float *cov) {
    /* blocks: records idx[0..n) (all records in order when idx is NULL), block i carrying motion (i, n + i);
     * disp (2, uh, uw) and cov may be one buffer */
    Recs r = {rec, isz, off};
    int64_t *geo = malloc(5 * (n + 1) * sizeof(int64_t)); /* per block: w, h, x0, y0, then the order */
    if (!geo) return -1;
    int64_t *bw = geo, *bh = geo + n, *x0 = geo + 2 * n, *y0 = geo + 3 * n, *order = geo + 4 * n;
    int64_t g = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t k = idx ? idx[i] : i;
        bw[i] = r_w(&r, k), bh[i] = r_h(&r, k);
        x0[i] = r_dx(&r, k) - bw[i] / 2, y0[i] = r_dy(&r, k) - bh[i] / 2;
        int64_t v[4] = {x0[i], y0[i], bw[i], bh[i]};
        for (int q = 0; q < 4; q++) /* a power-of-two g divides v when v's low bits are clear: no division */
            if (!g || ((g & (g - 1)) ? v[q] % g : v[q] & (g - 1))) g = gcd64(g, v[q]);
    }
    int64_t m = (g && g % UNIT == 0) ? g / UNIT : 1, cell = UNIT * m;
    int64_t mh = (uh + m - 1) / m, mw = (uw + m - 1) / m, lim_y = (ph + m - 1) / m, lim_x = (pw + m - 1) / m;
    double *acc = calloc(3 * mh * mw, sizeof(double) + sizeof(float)); /* sums, then the means as float */
    if (!acc) { free(geo); return -1; }
    /* stable order by block size (w * 4096 + h): a few distinct sizes, each gathered in stream order */
    int64_t sizes[64], ns = 0;
    for (int64_t i = 0; i < n && ns <= 64; i++) {
        int64_t key = bw[i] * 4096 + bh[i], k = 0;
        while (k < ns && sizes[k] != key) k++;
        if (k == ns && ns < 64) sizes[ns] = key;
        if (k == ns) ns++;
    }
    if (ns <= 64) {
        int64_t o = 0;
        for (int64_t a = 1; a < ns; a++) /* insertion sort of the distinct sizes */
            for (int64_t b = a; b > 0 && sizes[b - 1] > sizes[b]; b--) { int64_t t = sizes[b]; sizes[b] = sizes[b - 1]; sizes[b - 1] = t; }
        for (int64_t k = 0; k < ns; k++)
            for (int64_t i = 0; i < n; i++)
                if (bw[i] * 4096 + bh[i] == sizes[k]) order[o++] = i;
    } else {
        int64_t *pairs = malloc(2 * (n + 1) * sizeof(int64_t));
        if (!pairs) { free(geo); free(acc); return -1; }
        for (int64_t i = 0; i < n; i++) { pairs[2 * i] = bw[i] * 4096 + bh[i]; pairs[2 * i + 1] = i; }
        qsort(pairs, n, 2 * sizeof(int64_t), cmp_order); /* (size, index): ties keep stream order */
        for (int64_t i = 0; i < n; i++) order[i] = pairs[2 * i + 1];
        free(pairs);
    }
    double *a0 = acc, *a1 = acc + mh * mw, *a2 = acc + 2 * mh * mw;
    for (int64_t o = 0; o < n; o++) {
        int64_t i = order[o];
        int64_t cx = floordiv(x0[i], cell), cy = floordiv(y0[i], cell);
        int64_t nx = bw[i] / cell > 1 ? bw[i] / cell : 1, ny = bh[i] / cell > 1 ? bh[i] / cell : 1;
        for (int64_t q = 0; q < ny; q++)
            for (int64_t p = 0; p < nx; p++) {
                int64_t xs = cx + p, yy = cy + q;
                if (xs < 0 || xs >= lim_x || yy < 0 || yy >= lim_y) continue;
                int64_t k = yy * mw + xs;
                a0[k] += motion[i];
                a1[k] += motion[n + i];
                a2[k] += 1.0;
            }
    }
    /* each m-cell's mean once, as float (f0, f1, f2 after the sums), then repeated over its units; an empty m-cell
     * has sums 0 and divides by 1 (0, as numpy's where): no branch, so the loop is vectorised */
    float *f0 = (float *)(acc + 3 * mh * mw), *f1 = f0 + mh * mw, *f2 = f1 + mh * mw;
    for (int64_t k = 0; k < mh * mw; k++) {
        double c = a2[k], den = c > 0 ? c : 1.0;
        float m0 = (float)((a0[k] / den) / (double)UNIT), m1 = (float)((a1[k] / den) / (double)UNIT);
        f0[k] = m0; f1[k] = m1; f2[k] = (float)c;
    }
    const int64_t wide = pw < uw ? pw : uw; /* units of a row inside the picture (rows from ph on: none) */
    for (int64_t u = 0; u < uh; u++) {
        float *d0 = disp + u * uw, *d1 = disp + uh * uw + u * uw, *cv = cov + u * uw;
        int64_t lim = u < ph ? wide : 0;
        if (u % m && (u - 1 < ph) == (u < ph)) { /* the same m-cells, inside or outside, as the row above */
            memcpy(d0, d0 - uw, uw * sizeof(float));
            memcpy(d1, d1 - uw, uw * sizeof(float));
            memcpy(cv, cv - uw, uw * sizeof(float));
            continue;
        }
        const float *c0 = f0 + (u / m) * mw, *c1 = f1 + (u / m) * mw, *c2 = f2 + (u / m) * mw;
        int64_t v = 0;
        if (m == 2) /* the usual grid (8-px blocks): pairs of units, a loop the compiler vectorises */
            for (; v + 2 <= lim; v += 2) {
                d0[v] = d0[v + 1] = c0[v / 2];
                d1[v] = d1[v + 1] = c1[v / 2];
                cv[v] = cv[v + 1] = c2[v / 2];
            }
        for (int64_t q = v / m; v < lim; q++) /* each m-cell's values repeated over its m units: no division per unit */
            for (int64_t t = 0; t < m && v < lim; t++, v++) { d0[v] = c0[q]; d1[v] = c1[q]; cv[v] = c2[q]; }
        for (v = lim; v < uw; v++) d0[v] = d1[v] = cv[v] = 0.0f;
    }
    free(acc); free(geo);
    return 0;
}

/* ------------------------------------------------------------------ Fitter.fit_field
 * Separable bilinear taps: rows (gh) and columns (gw), two each (ra/rc (2, gh) weights and source rows, ca/cc
 * (2, gw) weights and source columns); rin (gh) uint8 / cin (gw) 1.0 or 0.0: rows / columns inside the scaled
 * picture. d (2, S) float32 weighted by wt (S) float32, S = sh * sw. Writes out (2, G) float32 (rescaled by sx, sy), then wsum (G).
 * Separably, as the numpy twin: each engine row first mixes its two source rows over every source column
 * (v = ra0 p[r0] + ra1 p[r1], p the float32 products d * wt: contiguous, the compiler vectorises it), then samples
 * that row at the engine columns (ca0 v[c0] + ca1 v[c1]): 2 + 2 taps per cell instead of 4 products of both
 * weights, and half the gathers of sampling the source rows first. Returns 0, -1 on an allocation failure. */
/* noinline: a loop of its own, which the compiler vectorises (inside the row loop's nest it does not) */
__attribute__((noinline)) WIDE static void mix_rows(const float *restrict a0, const float *restrict a1,
                                               const float *restrict b0, const float *restrict b1,
                                               const float *restrict w0, const float *restrict w1, double y0, double y1,
                                               int64_t sw, double *restrict v) {
    for (int64_t x = 0; x < sw; x++) {
        float p0 = a0[x] * w0[x], p1 = a1[x] * w1[x], q0 = b0[x] * w0[x], q1 = b1[x] * w1[x];
        v[x] = y0 * (double)p0 + y1 * (double)p1;
        v[sw + x] = y0 * (double)q0 + y1 * (double)q1;
        v[2 * sw + x] = y0 * (double)w0[x] + y1 * (double)w1[x];
    }
}

/* one engine row from its mixed source rows sampled at the engine columns (h: 3 x gw): the quotients are formed for
 * every cell (den >= 1e-6) and zeroed by a factor, no branch, so the compiler vectorises it (selects by ``?`` kept it
 * scalar); a zeroed cell may come out as -0.0, equal to 0.0 */
__attribute__((noinline)) WIDE static void finish_row(const double *restrict h, const double *restrict cin, int64_t gw,
                                                 double sx, double sy, float *restrict o0, float *restrict o1,
                                                 float *restrict ow) {
    for (int64_t j = 0; j < gw; j++) {
        double ws = h[2 * gw + j] * cin[j]; /* cin 1.0 or 0.0; ws >= 0: exactly ws or +0.0 */
        double k = ws > 1e-6 ? 1.0 : 0.0;
        double den = ws > 1e-6 ? ws : 1e-6;
        o0[j] = (float)((h[j] / den) * sx * k);
        o1[j] = (float)((h[gw + j] / den) * sy * k);
        ow[j] = (float)ws;
    }
}

int64_t mvh_fit_field(const double *ra, const int64_t *rc, const uint8_t *rin, int64_t gh, const double *ca,
                      const int64_t *cc, const double *cin, int64_t gw, const float *d, const float *wt, int64_t sw,
                      int64_t S, double sx, double sy, float *out) {
    int64_t G = gh * gw;
    float *wsum = out + 2 * G;
    double *v = malloc((3 * sw + 3 * gw) * sizeof(double)), *h = v + 3 * sw;
    if (!v) return -1;
    for (int64_t i = 0; i < gh; i++) {
        float *o0 = out + i * gw, *o1 = out + G + i * gw, *ow = wsum + i * gw;
        if (!rin[i]) { /* below the picture: no weight, no motion */
            for (int64_t j = 0; j < gw; j++) o0[j] = o1[j] = ow[j] = 0.0f;
            continue;
        }
        int64_t r0 = rc[i] * sw, r1 = rc[gh + i] * sw;
        mix_rows(d + r0, d + r1, d + S + r0, d + S + r1, wt + r0, wt + r1, ra[i], ra[gh + i], sw, v);
        for (int64_t j = 0; j < gw; j++) {
            int64_t c0 = cc[j], c1 = cc[gw + j];
            double x0 = ca[j], x1 = ca[gw + j];
            h[j] = x0 * v[c0] + x1 * v[c1];
            h[gw + j] = x0 * v[sw + c0] + x1 * v[sw + c1];
            h[2 * gw + j] = x0 * v[2 * sw + c0] + x1 * v[2 * sw + c1];
        }
        finish_row(h, cin, gw, sx, sy, o0, o1, ow);
    }
    free(v);
    return 0;
}

/* ------------------------------------------------------------------ the field's pyramid of state scales
 * runtime.propagation.mv_pyramid with the same float32 operations in the same order: scale 0 is the field where
 * any block covers it; scale i sums the coverage-weighted field and the coverage over 2^i x 2^i cells (columns
 * first, as _lane_sum adds parts: in sequence below 8, else 8 running lanes added as a tree; then rows in
 * sequence), zero beyond the grid, and takes the weighted mean divided by 2^i. Why: numpy's forty-odd calls per
 * frame on the field thread each released the GIL and waited to get it back (issue #30).
 * shapes: n rows (h, w), the first the field's own (h0, w0); out: the n fields (2, h, w) one after another.
 * Returns 0, -1 when out of memory, 1 for a cell wider than 128 (the caller keeps numpy's reduction). */
static float pyr_lanes(const float *p, int64_t f) {
    if (f < 8) {
        float acc = p[0];
        for (int64_t k = 1; k < f; k++) acc += p[k];
        return acc;
    }
    int64_t whole = f - f % 8;
    float l[8];
    for (int j = 0; j < 8; j++) l[j] = p[j];
    for (int64_t i = 8; i < whole; i += 8)
        for (int j = 0; j < 8; j++) l[j] += p[i + j];
    float acc = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    for (int64_t k = whole; k < f; k++) acc += p[k];
    return acc;
}

/* dst[j]: the sum of row[j f .. j f + f - 1], zeros past the row's w0 values. */
static void pyr_cols(const float *restrict row, int64_t w0, int64_t f, int64_t w, float *restrict dst) {
    int64_t full = w0 / f < w ? w0 / f : w, j = 0;
    if (f == 2)
        for (; j < full; j++) dst[j] = row[2 * j] + row[2 * j + 1];
    else if (f == 4)
        for (; j < full; j++) dst[j] = ((row[4 * j] + row[4 * j + 1]) + row[4 * j + 2]) + row[4 * j + 3];
    else
        for (; j < full; j++) dst[j] = pyr_lanes(row + j * f, f);
    for (; j < w; j++) {
        float v[128];
        for (int64_t k = 0; k < f; k++) v[k] = j * f + k < w0 ? row[j * f + k] : 0.0f;
        dst[j] = pyr_lanes(v, f);
    }
}

/* One row of a scale: the weighted means (acc: the row's three sums) divided by the cell's width f; every lane
 * divides (by 1 where dropped), so the loop runs as vector divisions. */
static void pyr_finish(const float *restrict acc, int64_t w, float f, float *restrict o0, float *restrict o1) {
    for (int64_t j = 0; j < w; j++) {
        float den = acc[2 * w + j];
        int keep = den > 1e-6f;
        float by = keep ? den : 1.0f, q0 = acc[j] / by, q1 = acc[w + j] / by;
        o0[j] = (keep ? q0 : 0.0f) / f;
        o1[j] = (keep ? q1 : 0.0f) / f;
    }
}

int64_t mvh_pyramid(const float *restrict disp, const float *restrict cov, int64_t h0, int64_t w0,
                    const int64_t *shapes, int64_t n, float *restrict out) {
    int64_t G = h0 * w0, widest = 0;
    for (int64_t i = 1; i < n; i++) {
        if ((int64_t)1 << i > 128) return 1;
        if (shapes[2 * i + 1] > widest) widest = shapes[2 * i + 1];
    }
    float *buf = malloc((3 * w0 + 6 * widest + 1) * sizeof(float));
    if (!buf) return -1;
    float *src = buf, *acc = buf + 3 * w0, *tmp = acc + 3 * widest;
    for (int64_t k = 0; k < G; k++) {
        float keep = cov[k] > 0 ? 1.0f : 0.0f;
        out[k] = disp[k] * keep;
        out[G + k] = disp[G + k] * keep;
    }
    float *o = out + 2 * G;
    for (int64_t i = 1; i < n; i++) {
        int64_t f = (int64_t)1 << i, h = shapes[2 * i], w = shapes[2 * i + 1], hw = h * w;
        for (int64_t y = 0; y < h; y++) {
            for (int64_t dy = 0; dy < f; dy++) {
                int64_t sy = y * f + dy;
                float *dst = dy ? tmp : acc;
                if (sy < h0) { /* the row's coverage-weighted field and coverage, then its cells' column sums */
                    const float *d0 = disp + sy * w0, *d1 = disp + G + sy * w0, *cv = cov + sy * w0;
                    for (int64_t x = 0; x < w0; x++) {
                        src[x] = d0[x] * cv[x];
                        src[w0 + x] = d1[x] * cv[x];
                        src[2 * w0 + x] = cv[x];
                    }
                    for (int c = 0; c < 3; c++) pyr_cols(src + c * w0, w0, f, w, dst + c * w);
                } else {
                    for (int64_t k = 0; k < 3 * w; k++) dst[k] = 0.0f;
                }
                if (dy)
                    for (int64_t k = 0; k < 3 * w; k++) acc[k] += tmp[k];
            }
            pyr_finish(acc, w, (float)f, o + y * w, o + hw + y * w);
        }
        o += 2 * hw;
    }
    free(buf);
    return 0;
}

/* ------------------------------------------------------------------ mean absolute differences
 * Mean absolute difference of two byte pictures (h rows of w bytes, row strides as, bs) at every step-th byte of
 * every step-th row: the field's change fact (lumas, step 8: motion_vectors._change) and the reset monitor's
 * shot-change evidence (thumbnails as one row, step 1: runtime.modes.frame_change). The integer sum is exact, so the
 * mean equals numpy's. The thumbnails' call holds the GIL (ctypes.PyDLL): a few microseconds of work, where
 * numpy's five calls each released the GIL and the loop thread then waited for a busy thread to give it back
 * (issue #30). */
double mvh_absdiff_mean(const uint8_t *a, int64_t as, const uint8_t *b, int64_t bs, int64_t h, int64_t w,
                        int64_t step) {
    int64_t sum = 0, n = 0;
    for (int64_t i = 0; i < h; i += step)
        for (int64_t j = 0; j < w; j += step) {
            int d = (int)a[i * as + j] - (int)b[i * bs + j];
            sum += d < 0 ? -d : d;
            n++;
        }
    return n ? (double)sum / (double)n : NAN;
}

/* ------------------------------------------------------------------ class maps, run-length coded
 * n bytes (a flattened class map) as (value, run length - 1) byte pairs, runs at most 256 long, into out (2n bytes
 * at most). Returns the bytes written. Why here: the writer thread codes every frame's map; in C (ctypes releases
 * the GIL) it holds no lock the loop thread waits for. A run is extended a word at a time: the first byte that
 * differs is the lowest set byte of the word XOR the run's value repeated (little-endian; bytewise elsewhere). */
int64_t mvh_rle8(const uint8_t *a, int64_t n, uint8_t *out) {
    int64_t o = 0, i = 0;
    while (i < n) {
        uint8_t v = a[i];
        int64_t lim = n - i < 256 ? n : i + 256, j = i + 1;
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        uint64_t word = 0x0101010101010101ull * v, got;
        for (; j + 8 <= lim; j += 8) {
            memcpy(&got, a + j, 8);
            if (got != word) break;
        }
        if (j + 8 <= lim) j += __builtin_ctzll(got ^ word) >> 3;
        else
#endif
            while (j < lim && a[j] == v) j++;
        out[o++] = v;
        out[o++] = (uint8_t)(j - i - 1);
        i = j;
    }
    return o;
}

/* ------------------------------------------------------------------ frames fitted to the engine size
 * Pillow's BILINEAR resize of an 8-bit RGB picture with the same integers: per axis a triangle filter widened by
 * the downscale factor, weights normalised in double and rounded to 22-bit fixed point, each pass rounded and
 * clipped to 8 bits. Pillow chooses which axis goes first by the sizes (its version decides how); the caller says
 * (``order``), having checked on a probe picture which order gives Pillow's result (runtime.sources.Fitter).
 * Integer sums are exact in any order, so every output reads a fixed window of k taps (zero weights pad it,
 * shifted to stay inside the picture): constant trip counts the compiler unrolls, and with AVX2 eight outputs at a
 * time from gathered pixels. Why: Pillow's resize (RGBX
 * pixels, copies in and out) was most of the host's decode stage (issue #30). */
#define RS_BITS 22

/* One axis: first input index and k fixed-point weights per output index; returns k, 0 on no memory. */
static int64_t rs_taps(int64_t in_size, int64_t out_size, int64_t **first, int32_t **weights) {
    double scale = (double)(float)in_size / (double)out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = filterscale, inv = 1.0 / filterscale;
    int64_t k = (int64_t)ceil(support) * 2 + 1;
    if (k > in_size) k = in_size; /* a window never holds more than the whole axis */
    double *w = malloc(sizeof(double) * k);
    *first = malloc(sizeof(int64_t) * out_size);
    *weights = calloc((size_t)(out_size * k), sizeof(int32_t));
    if (!w || !*first || !*weights) {
        free(w);
        return 0;
    }
    for (int64_t o = 0; o < out_size; o++) {
        double center = (o + 0.5) * scale, sum = 0.0;
        int64_t lo = (int64_t)(center - support + 0.5), hi = (int64_t)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_size) hi = in_size;
        int64_t n = hi - lo, start = lo + k <= in_size ? lo : in_size - k;
        for (int64_t x = 0; x < n; x++) {
            double d = ((double)(x + lo) - center + 0.5) * inv;
            d = d < 0.0 ? -d : d;
            w[x] = d < 1.0 ? 1.0 - d : 0.0;
            sum += w[x];
        }
        for (int64_t x = 0; x < n; x++) {
            double v = sum != 0.0 ? w[x] / sum : w[x];
            (*weights)[o * k + (lo - start) + x] = (int32_t)(0.5 + v * (1 << RS_BITS));
        }
        (*first)[o] = start;
    }
    free(w);
    return k;
}

static inline uint8_t rs_clip(int32_t s) {
    s >>= RS_BITS;
    return (uint8_t)(s < 0 ? 0 : s > 255 ? 255 : s);
}

/* Horizontal pass of one row from output o0 on: out pixel o from k pixels at xf[o]. K: the window length, a
 * constant where the switch below names it (the compiler unrolls it), else ``k``. */
#define RS_HROW(K, o0)                                                                                               \
    for (int64_t o = (o0); o < dw; o++) {                                                                            \
        const uint8_t *p = in + xf[o] * 3;                                                                           \
        const int32_t *w = xw + o * (K);                                                                             \
        int32_t s0 = 1 << (RS_BITS - 1), s1 = s0, s2 = s0;                                                           \
        for (int64_t t = 0; t < (K); t++) {                                                                          \
            s0 += p[3 * t] * w[t];                                                                                   \
            s1 += p[3 * t + 1] * w[t];                                                                               \
            s2 += p[3 * t + 2] * w[t];                                                                               \
        }                                                                                                            \
        out[3 * o] = rs_clip(s0), out[3 * o + 1] = rs_clip(s1), out[3 * o + 2] = rs_clip(s2);                        \
    }

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define RS_AVX2 1
/* Outputs [0, n8) of one row, 8 at a time (AVX2): each tap gathers the 4-byte words at the 8 windows' pixels (R, G,
 * B and the next byte), splits the channels and adds them times that tap's 8 weights (wt: transposed, wt[t * dw8 +
 * o]). The same integer sums as RS_HROW. The caller keeps every load inside the picture (n8). */
__attribute__((target("avx2"))) static void rs_hrow_avx2(const uint8_t *in, const int32_t *off, const int32_t *wt,
                                                         int64_t k, int64_t dw8, int64_t n8, uint8_t *out) {
    const __m256i byte = _mm256_set1_epi32(0xFF), half = _mm256_set1_epi32(1 << (RS_BITS - 1));
    const __m256i top = _mm256_set1_epi32(255), zero = _mm256_setzero_si256();
    int32_t px[8];
    for (int64_t o = 0; o < n8; o += 8) {
        __m256i at = _mm256_loadu_si256((const __m256i *)(off + o)), r = half, g = half, b = half;
        for (int64_t t = 0; t < k; t++) {
            __m256i v = _mm256_i32gather_epi32((const int *)(in + 3 * t), at, 1);
            __m256i w = _mm256_loadu_si256((const __m256i *)(wt + t * dw8 + o));
            r = _mm256_add_epi32(r, _mm256_mullo_epi32(_mm256_and_si256(v, byte), w));
            g = _mm256_add_epi32(g, _mm256_mullo_epi32(_mm256_and_si256(_mm256_srli_epi32(v, 8), byte), w));
            b = _mm256_add_epi32(b, _mm256_mullo_epi32(_mm256_and_si256(_mm256_srli_epi32(v, 16), byte), w));
        }
        r = _mm256_max_epi32(_mm256_min_epi32(_mm256_srai_epi32(r, RS_BITS), top), zero);
        g = _mm256_max_epi32(_mm256_min_epi32(_mm256_srai_epi32(g, RS_BITS), top), zero);
        b = _mm256_max_epi32(_mm256_min_epi32(_mm256_srai_epi32(b, RS_BITS), top), zero);
        __m256i rgb = _mm256_or_si256(r, _mm256_or_si256(_mm256_slli_epi32(g, 8), _mm256_slli_epi32(b, 16)));
        _mm256_storeu_si256((__m256i *)px, rgb);
        for (int i = 0; i < 8; i++) memcpy(out + 3 * (o + i), px + i, 3); /* little-endian: R, G, B */
    }
}
#endif

/* The horizontal pass over ``rows`` rows (src rows ``stride`` apart, sw pixels each). With AVX2 the outputs go 8 at
 * a time, except where a 4-byte load would read past the picture's last byte (the last row's final windows). */
static void rs_hpass(const uint8_t *src, int64_t stride, int64_t rows, int64_t sw, const int64_t *xf,
                     const int32_t *xw, int64_t k, int64_t dw, uint8_t *dst, int64_t dstride) {
    int64_t done = 0, last = 0;
#ifdef RS_AVX2
    int64_t dw8 = (dw + 7) / 8 * 8;
    int32_t *off = NULL, *wt = NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && (off = malloc(sizeof(int32_t) * dw8)) &&
        (wt = calloc((size_t)(k * dw8), sizeof(int32_t)))) {
        for (int64_t o = 0; o < dw; o++) {
            off[o] = (int32_t)(xf[o] * 3);
            for (int64_t t = 0; t < k; t++) wt[t * dw8 + o] = xw[o * k + t];
            if (xf[o] + k < sw) last = o + 1; /* its last load (4 bytes at its last pixel) ends inside the picture */
        }
        done = dw / 8 * 8, last = last / 8 * 8;
    }
#endif
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *in = src + r * stride;
        uint8_t *out = dst + r * dstride;
        int64_t o0 = r + 1 < rows ? done : last; /* below the last row lies the next one: its loads stay inside */
#ifdef RS_AVX2
        if (o0) rs_hrow_avx2(in, off, wt, k, dw8, o0, out);
#endif
        switch (k) {
        case 3: RS_HROW(3, o0) break;
        case 5: RS_HROW(5, o0) break;
        case 7: RS_HROW(7, o0) break;
        case 9: RS_HROW(9, o0) break;
        case 11: RS_HROW(11, o0) break;
        case 13: RS_HROW(13, o0) break;
        default: RS_HROW(k, o0) break;
        }
    }
#ifdef RS_AVX2
    free(off), free(wt);
#endif
}

/* Vertical pass: out row o from k rows at yf[o] (n bytes each), along whole rows (vectorised). */
WIDE static int rs_vpass(const uint8_t *src, int64_t stride, const int64_t *yf, const int32_t *yw, int64_t k,
                    int64_t dh, int64_t n, uint8_t *dst, int64_t dstride) {
    int32_t *acc = malloc(sizeof(int32_t) * n);
    if (!acc) return -1;
    for (int64_t o = 0; o < dh; o++) {
        const int32_t *w = yw + o * k;
        for (int64_t i = 0; i < n; i++) acc[i] = 1 << (RS_BITS - 1);
        for (int64_t t = 0; t < k; t++) {
            const uint8_t *restrict row = src + (yf[o] + t) * stride;
            int32_t wt = w[t];
            if (wt)
                for (int64_t i = 0; i < n; i++) acc[i] += row[i] * wt;
        }
        uint8_t *out = dst + o * dstride;
        for (int64_t i = 0; i < n; i++) out[i] = rs_clip(acc[i]);
    }
    free(acc);
    return 0;
}

/* src (sh, sw, 3), rows src_stride bytes apart -> dst (dh, dw, 3) contiguous; order 0: horizontal pass first (over
 * the rows the vertical pass reads), 1: vertical first. Returns 0; -1 without memory; 1 for an empty size. */
int64_t mvh_resize_rgb(const uint8_t *src, int64_t sh, int64_t sw, int64_t src_stride, uint8_t *dst, int64_t dh,
                       int64_t dw, int64_t order) {
    int64_t *xf = NULL, *yf = NULL, rc = -1, kx = 0, ky = 0;
    int32_t *xw = NULL, *yw = NULL;
    uint8_t *tmp = NULL;
    int hor = dw != sw, ver = dh != sh;
    if (sh < 1 || sw < 1 || dh < 1 || dw < 1) {
        rc = 1;
        goto done;
    }
    if ((ver && !(ky = rs_taps(sh, dh, &yf, &yw))) || (hor && !(kx = rs_taps(sw, dw, &xf, &xw)))) goto done;
    if (!hor && !ver) {
        for (int64_t r = 0; r < dh; r++) memcpy(dst + r * dw * 3, src + r * src_stride, (size_t)(dw * 3));
    } else if (!ver) {
        rs_hpass(src, src_stride, dh, sw, xf, xw, kx, dw, dst, dw * 3);
    } else if (!hor) {
        if (rs_vpass(src, src_stride, yf, yw, ky, dh, dw * 3, dst, dw * 3)) goto done;
    } else if (order == 0) { /* rows yf[0] .. the last window's end, horizontally, then vertically */
        int64_t y0 = yf[0], rows = yf[dh - 1] + ky - y0;
        if (!(tmp = malloc((size_t)(rows * dw * 3)))) goto done;
        rs_hpass(src + y0 * src_stride, src_stride, rows, sw, xf, xw, kx, dw, tmp, dw * 3);
        for (int64_t o = 0; o < dh; o++) yf[o] -= y0;
        if (rs_vpass(tmp, dw * 3, yf, yw, ky, dh, dw * 3, dst, dw * 3)) goto done;
    } else {
        if (!(tmp = malloc((size_t)(dh * sw * 3)))) goto done;
        if (rs_vpass(src, src_stride, yf, yw, ky, dh, sw * 3, tmp, sw * 3)) goto done;
        rs_hpass(tmp, sw * 3, dh, sw, xf, xw, kx, dw, dst, dw * 3);
    }
    rc = 0;
done:
    free(xf), free(yf), free(xw), free(yw), free(tmp);
    return rc;
}
