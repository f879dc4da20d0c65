/* float32 FMA peak of this machine: each thread runs 10 independent
 * 8-wide AVX2 FMA accumulator chains (enough to hide the FMA latency on the
 * CPUs these benchmarks run on), no memory traffic; where the CPU has
 * AVX-512F, 16-wide chains run too and the faster of the two widths
 * counts (a CPU whose 512-bit FMA is split into two 256-bit halves gives
 * the same figure for both). Prints GFLOP/s (an FMA counts as 2 FLOPs),
 * best of `runs`, and the vector width that reached it.
 *
 * The chains start from different values: with equal ones, GCC merges
 * them into one chain (the same operations on the same values), and the
 * loop then times the latency of one FMA while counting ten; on a CPU with
 * 4-cycle FMAs and two FMA pipes that read 25 % above the true peak.
 *
 * Usage: fma_peak THREADS [ITERATIONS] [RUNS]
 * Built by benchmarks/models.py with gcc -O2 -mavx2 -mfma -pthread.
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long iterations = 20000000;

static void *chain(void *out) {
  __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  __m256 c0 = _mm256_set1_ps(0.0f), c1 = _mm256_set1_ps(0.1f);
  __m256 c2 = _mm256_set1_ps(0.2f), c3 = _mm256_set1_ps(0.3f);
  __m256 c4 = _mm256_set1_ps(0.4f), c5 = _mm256_set1_ps(0.5f);
  __m256 c6 = _mm256_set1_ps(0.6f), c7 = _mm256_set1_ps(0.7f);
  __m256 c8 = _mm256_set1_ps(0.8f), c9 = _mm256_set1_ps(0.9f);
  for (long i = 0; i < iterations; ++i) {
    c0 = _mm256_fmadd_ps(c0, a, b);
    c1 = _mm256_fmadd_ps(c1, a, b);
    c2 = _mm256_fmadd_ps(c2, a, b);
    c3 = _mm256_fmadd_ps(c3, a, b);
    c4 = _mm256_fmadd_ps(c4, a, b);
    c5 = _mm256_fmadd_ps(c5, a, b);
    c6 = _mm256_fmadd_ps(c6, a, b);
    c7 = _mm256_fmadd_ps(c7, a, b);
    c8 = _mm256_fmadd_ps(c8, a, b);
    c9 = _mm256_fmadd_ps(c9, a, b);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), c2),
                           _mm256_add_ps(_mm256_add_ps(c3, c4), c5));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(c6, c7),
                                     _mm256_add_ps(c8, c9)));
  float v[8];
  _mm256_storeu_ps(v, s);
  *(float *)out = v[0];
  return NULL;
}

__attribute__((target("avx512f"))) static void *chain512(void *out) {
  __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  __m512 c0 = _mm512_set1_ps(0.0f), c1 = _mm512_set1_ps(0.1f);
  __m512 c2 = _mm512_set1_ps(0.2f), c3 = _mm512_set1_ps(0.3f);
  __m512 c4 = _mm512_set1_ps(0.4f), c5 = _mm512_set1_ps(0.5f);
  __m512 c6 = _mm512_set1_ps(0.6f), c7 = _mm512_set1_ps(0.7f);
  __m512 c8 = _mm512_set1_ps(0.8f), c9 = _mm512_set1_ps(0.9f);
  for (long i = 0; i < iterations; ++i) {
    c0 = _mm512_fmadd_ps(c0, a, b);
    c1 = _mm512_fmadd_ps(c1, a, b);
    c2 = _mm512_fmadd_ps(c2, a, b);
    c3 = _mm512_fmadd_ps(c3, a, b);
    c4 = _mm512_fmadd_ps(c4, a, b);
    c5 = _mm512_fmadd_ps(c5, a, b);
    c6 = _mm512_fmadd_ps(c6, a, b);
    c7 = _mm512_fmadd_ps(c7, a, b);
    c8 = _mm512_fmadd_ps(c8, a, b);
    c9 = _mm512_fmadd_ps(c9, a, b);
  }
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), c2),
                           _mm512_add_ps(_mm512_add_ps(c3, c4), c5));
  s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(c6, c7),
                                     _mm512_add_ps(c8, c9)));
  *(float *)out = _mm512_reduce_add_ps(s);
  return NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  if (argc > 2) iterations = atol(argv[2]);
  int runs = argc > 3 ? atoi(argv[3]) : 5;
  if (threads < 1 || threads > 1024 || iterations < 1 || runs < 1) {
    fprintf(stderr, "usage: fma_peak THREADS [ITERATIONS] [RUNS]\n");
    return 2;
  }
  pthread_t *t = malloc(sizeof(pthread_t) * threads);
  float *sink = malloc(sizeof(float) * threads);
  double best = 0, sum = 0;
  int best_width = 8;
  int widths = __builtin_cpu_supports("avx512f") ? 2 : 1;
  for (int w = 0; w < widths; ++w) {
    int lanes = w ? 16 : 8;
    for (int r = 0; r < runs; ++r) {
      double t0 = now();
      for (int i = 0; i < threads; ++i)
        pthread_create(&t[i], NULL, w ? chain512 : chain, &sink[i]);
      for (int i = 0; i < threads; ++i) pthread_join(t[i], NULL);
      double g = 2.0 * lanes * 10 * (double)iterations * threads /
                 (now() - t0) / 1e9;
      if (g > best) {
        best = g;
        best_width = lanes;
      }
    }
    for (int i = 0; i < threads; ++i) sum += sink[i];
  }
  printf("%.3f %g %d\n", best, sum, best_width);
  free(t);
  free(sink);
  return 0;
}
