/* The machine's AVX-512 FMA peak in GFLOP/s: each thread runs 12 independent chains of 16-lane
 * fused multiply-adds (enough to cover the FMA latency on two ports), no memory traffic. The
 * ceiling any f32 matrix kernel can reach here, for reading BENCHMARKS.md's GFLOP/s figures.
 *
 *     gcc -O2 -mavx512f -mfma -o /tmp/fma_peak scripts/bench/fma_peak.c -lpthread
 *     /tmp/fma_peak 1 && /tmp/fma_peak 2      # threads
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHAINS 12
#define ITERS 250000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *run(void *out) {
    __m512 acc[CHAINS];
    const __m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-8f);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < ITERS; n++) {
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], b, c);
    }
    float s = 0;
    for (int i = 0; i < CHAINS; i++) s += _mm512_reduce_add_ps(acc[i]);
    *(float *)out = s; /* keeps the chains live */
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 64) threads = 1;
    pthread_t th[64];
    float sink[64];
    double t0 = now();
    for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, run, &sink[i]);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    double dt = now() - t0;
    double flops = (double)threads * ITERS * CHAINS * 16 * 2;
    printf("threads %d: %.1f GFLOP/s (%.2f s; %g)\n", threads, flops / dt / 1e9, dt, sink[0]);
    return 0;
}
