/* A stand-in for the CUDA driver (libcuda.so.1) on build machines without a GPU.
 *
 * TVM's CUDA runtime library links libcuda.so.1; when that cannot load, tvm.compile keeps
 * the kernels as CUDA source and export_library writes a .so no machine can load. With this
 * stub on LD_LIBRARY_PATH the runtime library loads, codegen embeds compiled kernels, and the
 * exported .so runs wherever the real driver is. Every driver call fails with
 * CUDA_ERROR_STUB_LIBRARY (34): nothing can run on a GPU through it.
 * The symbols are those libtvm_runtime_cuda.so imports (nm -D --undefined-only ... | grep cu).
 */
typedef int CUresult;
#define CUDA_ERROR_STUB_LIBRARY 34

static const char kName[] = "CUDA_ERROR_STUB_LIBRARY";
static const char kMessage[] = "ivit-tvm build-time CUDA driver stub: no GPU on this machine";

CUresult cuGetErrorName(CUresult error, const char **name) {
  (void)error;
  if (name) *name = kName;
  return 0;
}

CUresult cuGetErrorString(CUresult error, const char **message) {
  (void)error;
  if (message) *message = kMessage;
  return 0;
}

CUresult cuInit(unsigned int flags) { (void)flags; return CUDA_ERROR_STUB_LIBRARY; }
CUresult cuDriverGetVersion(int *version) {
  if (version) *version = 0;
  return CUDA_ERROR_STUB_LIBRARY;
}
CUresult cuDeviceGetName(void) { return CUDA_ERROR_STUB_LIBRARY; }
CUresult cuFuncSetAttribute(void) { return CUDA_ERROR_STUB_LIBRARY; }
CUresult cuLaunchKernelEx(void) { return CUDA_ERROR_STUB_LIBRARY; }
CUresult cuModuleGetFunction(void) { return CUDA_ERROR_STUB_LIBRARY; }
CUresult cuModuleLoadData(void) { return CUDA_ERROR_STUB_LIBRARY; }
CUresult cuModuleUnload(void) { return CUDA_ERROR_STUB_LIBRARY; }
CUresult cuTensorMapEncodeTiled(void) { return CUDA_ERROR_STUB_LIBRARY; }
