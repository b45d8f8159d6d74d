// KV Cache Lab: f64 elementary functions for the statistics kernels (no libm here).
//
// Freestanding wasm has no libm, and the statistics must be the same on every host and in
// both builds, so they use these: f64 polynomials after Cody-Waite range reduction, a few
// ulp from the correctly rounded result on the ranges used. Header-only (static inline):
// each file that needs them gets its own copy, and none is exported.

#ifndef KV_MATHF64_H
#define KV_MATHF64_H

#include <stdint.h>

// ---------------------------------------------------------------------------------------
// exp and log (Cody-Waite reduction + series; ~1e-15 relative on the range used)
// ---------------------------------------------------------------------------------------

// e^x for x <= 709 (larger x is clamped); below -745 the result is 0.
static inline double exp_f64(double x) {
    if (!(x > -745.0)) return 0.0; // also NaN -> 0 (a NaN logit gets no probability)
    if (x > 709.0) x = 709.0;
    double k = __builtin_rint(x * 1.4426950408889634);
    double r = x - k * 6.93147180369123816490e-01; // ln 2, hi part (exact product)
    r = r - k * 1.90821492927058770002e-10;        // ln 2, lo part; |r| <= 0.347
    // Taylor to r^13 / 13!: the remainder is below 0.347^14 / 14! ~ 4e-18
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t e = (int64_t)k; // k in [-1075, 1023]: build 2^k in two halves to stay normal
    int64_t e1 = e / 2, e2 = e - e1;
    uint64_t b1 = (uint64_t)(e1 + 1023) << 52, b2 = (uint64_t)(e2 + 1023) << 52;
    double s1, s2;
    __builtin_memcpy(&s1, &b1, 8);
    __builtin_memcpy(&s2, &b2, 8);
    return p * s1 * s2;
}

// ln x for finite x > 0 (normal numbers).
static inline double log_f64(double x) {
    uint64_t b;
    __builtin_memcpy(&b, &x, 8);
    int64_t e = (int64_t)((b >> 52) & 0x7ff) - 1023;
    b = (b & 0x000fffffffffffffull) | 0x3ff0000000000000ull; // mantissa m in [1, 2)
    double m;
    __builtin_memcpy(&m, &b, 8);
    if (m > 1.4142135623730951) { m *= 0.5; e += 1; } // m in [sqrt(1/2), sqrt(2))
    // ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716: series to s^23
    double s = (m - 1.0) / (m + 1.0), s2 = s * s;
    double p = 1.0 / 23.0;
    for (int k = 21; k >= 1; k -= 2) p = p * s2 + 1.0 / (double)k;
    return 2.0 * s * p + (double)e * 0.69314718055994530942;
}

// ---------------------------------------------------------------------------------------
// sin and cos (reduction by pi/2 in three parts + Taylor series on [-pi/4, pi/4])
// ---------------------------------------------------------------------------------------

// sin x and cos x together, for |x| <= 2^20 (RoPE angles are below 1e5). k*PIO2_1 and
// k*PIO2_2 are exact products for |k| < 2^20, so the reduced r keeps ~1e-16 absolute.
static inline void sincos_f64(double x, double *s, double *c) {
    const double PIO2_1 = 1.57079632673412561417e+00;  // first 33 bits of pi/2
    const double PIO2_2 = 6.07710050630396597660e-11;  // next 33 bits
    const double PIO2_3 = 2.02226624879595063154e-21;  // the rest
    double k = __builtin_rint(x * 6.36619772367581382433e-01); // x * 2/pi
    double r = ((x - k * PIO2_1) - k * PIO2_2) - k * PIO2_3;    // |r| <= pi/4 (+ tiny)
    double r2 = r * r;
    // sin r = r - r^3/3! + ... to r^19/19!; cos r = 1 - r^2/2! + ... to r^20/20!:
    // the remainders are below (pi/4)^21/21! ~ 4e-22
    double ps = -1.0 / 121645100408832000.0;          // -1/19!
    ps = ps * r2 + 1.0 / 355687428096000.0;           //  1/17!
    ps = ps * r2 - 1.0 / 1307674368000.0;             // -1/15!
    ps = ps * r2 + 1.0 / 6227020800.0;                //  1/13!
    ps = ps * r2 - 1.0 / 39916800.0;                  // -1/11!
    ps = ps * r2 + 1.0 / 362880.0;                    //  1/9!
    ps = ps * r2 - 1.0 / 5040.0;                      // -1/7!
    ps = ps * r2 + 1.0 / 120.0;                       //  1/5!
    ps = ps * r2 - 1.0 / 6.0;                         // -1/3!
    double sr = r + r * r2 * ps;
    double pc = 1.0 / 2432902008176640000.0;          //  1/20!
    pc = pc * r2 - 1.0 / 6402373705728000.0;          // -1/18!
    pc = pc * r2 + 1.0 / 20922789888000.0;            //  1/16!
    pc = pc * r2 - 1.0 / 87178291200.0;               // -1/14!
    pc = pc * r2 + 1.0 / 479001600.0;                 //  1/12!
    pc = pc * r2 - 1.0 / 3628800.0;                   // -1/10!
    pc = pc * r2 + 1.0 / 40320.0;                     //  1/8!
    pc = pc * r2 - 1.0 / 720.0;                       // -1/6!
    pc = pc * r2 + 1.0 / 24.0;                        //  1/4!
    pc = pc * r2 - 0.5;                               // -1/2!
    double cr = 1.0 + r2 * pc;
    switch ((int64_t)k & 3) { // x = r + k pi/2
    case 0: *s = sr;  *c = cr;  break;
    case 1: *s = cr;  *c = -sr; break;
    case 2: *s = -sr; *c = -cr; break;
    default: *s = -cr; *c = sr; break;
    }
}

#endif
