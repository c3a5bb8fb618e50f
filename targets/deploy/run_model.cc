// Load a compress-graph TVM library on the board and run it: the C++ side of deployment (TVM 0.27 runtime API).
//
// Build on the board (or cross-build) against the TVM runtime only -- no compiler libraries:
//   g++ -std=c++17 -O2 run_model.cc -o run_model -I$TVM_FFI/include \
//       -L$TVM/lib -L$TVM_FFI/lib -ltvm_runtime -ltvm_ffi -Wl,-rpath,$TVM/lib:$TVM_FFI/lib
// Run: ./run_model model.so 1,3,64,64 [input.f32]   (raw float32 input; zeros when omitted)
// Prints the first values of the first output. Shapes and names are in model.json next to model.so.
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

// Host memory for tensors, 64-byte aligned as TVM's kernels assume.
struct AlignedCPUAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, bytes ? bytes : 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s model.so N,C,H,W [input.f32]\n", argv[0]);
    return 2;
  }
  std::vector<int64_t> shape;
  std::stringstream dims(argv[2]);
  for (std::string d; std::getline(dims, d, ',');) shape.push_back(std::stoll(d));
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  std::vector<float> input(numel, 0.0f);
  if (argc > 3) std::ifstream(argv[3], std::ios::binary).read(reinterpret_cast<char*>(input.data()), numel * 4);

  // The library holds a Relax VM executable: load it, then initialise the VM for the CPU
  // (device type, device id, allocator: 2 = pooled). For a GPU build pass the GPU first, then the CPU host:
  // vm_initialization(kDLCUDA, 0, 2, kDLCPU, 0, 2) -- and allocate the input on the GPU.
  ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
  ffi::Function run = vm->GetFunction("main").value();

  DLDevice cpu{kDLCPU, 0};
  ffi::Tensor x = ffi::Tensor::FromNDAlloc(AlignedCPUAlloc(), ffi::Shape(shape), DLDataType{kDLFloat, 32, 1}, cpu);
  std::memcpy(x.data_ptr(), input.data(), numel * sizeof(float));
  ffi::Any result = run(x);
  // One output -> a Tensor; several -> an Array of Tensors.
  ffi::Tensor y = result.as<ffi::Tensor>().has_value() ? result.cast<ffi::Tensor>()
                                                       : result.cast<ffi::Array<ffi::Tensor>>()[0];
  const float* out = static_cast<const float*>(y.data_ptr());
  std::printf("output[0] shape=(");
  for (size_t i = 0; i < y.shape().size(); ++i) std::printf(i ? ",%lld" : "%lld", (long long)y.shape()[i]);
  std::printf(") values:");
  for (int64_t i = 0; i < y.numel() && i < 10; ++i) std::printf(" %.6f", out[i]);
  std::printf("\n");
  return 0;
}
