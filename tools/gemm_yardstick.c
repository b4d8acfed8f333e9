// OpenBLAS single-precision GEMM throughput, the yardstick for nala's CPU gemm. Not part of the
// library (nala depends on no BLAS); built and run by hand, from the repository root:
//   gcc -O2 -o /tmp/gemm_yardstick tools/gemm_yardstick.c -lopenblas
//   OPENBLAS_NUM_THREADS=2 /tmp/gemm_yardstick
//
// For each square size n it times C = A B (n x n, float32) and prints the best GFLOP/s,
// 2 n^3 / seconds, over a few repetitions after one warm-up call.
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(void) {
  const int sizes[] = {512, 1024, 2048};
  const int repetitions = 5;
  printf("OpenBLAS sgemm, %d threads\n", openblas_get_num_threads());
  for (int s = 0; s < 3; ++s) {
    const int n = sizes[s];
    float* a = malloc(sizeof(float) * n * n);
    float* b = malloc(sizeof(float) * n * n);
    float* c = malloc(sizeof(float) * n * n);
    for (int i = 0; i < n * n; ++i) {
      a[i] = (float)rand() / RAND_MAX - 0.5f;
      b[i] = (float)rand() / RAND_MAX - 0.5f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    double best = 1e30;
    for (int r = 0; r < repetitions; ++r) {
      const double start = now_seconds();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
      const double elapsed = now_seconds() - start;
      if (elapsed < best) best = elapsed;
    }
    printf("n = %4d: %7.1f GFLOP/s\n", n, 2.0 * n * n * n / best * 1e-9);
    free(a);
    free(b);
    free(c);
  }
  return 0;
}
