// NALA_HOST_DEVICE marks functions that the CPU code, the tests and the CUDA kernels share.
#pragma once

#ifdef __CUDACC__
#define NALA_HOST_DEVICE __host__ __device__
#else
#define NALA_HOST_DEVICE
#endif
