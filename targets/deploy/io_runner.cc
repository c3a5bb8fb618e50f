// Run a compress-graph TVM library on raw input files and write raw output files: the runner that
// --verify-target uses under qemu-user (a compiled runner starts in ~2 s under emulation; `import tvm` in an
// emulated Python takes 10-60 s).
//
// usage: io_runner model.so OUT_DIR INPUT...   with INPUT = path:code.bits.lanes:d0,d1,...  (DLPack dtype)
// writes OUT_DIR/out<k>.bin (raw, C order) and OUT_DIR/out<k>.txt ("code.bits.lanes d0,d1,...") per output.
// CG_IO_RUNNER_RUNS=N (bench/arm) runs the model N times and brackets runs 2..N with the marker syscalls that
// bench/arm/insn_count.c counts between (getpid with the arguments 0xC0FFEE, 1000 / 1001; getpid ignores them).
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

struct AlignedCPUAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, bytes ? bytes : 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

static std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  for (std::string p; std::getline(in, p, sep);) parts.push_back(p);
  return parts;
}

static ffi::Tensor ReadInput(const std::string& spec) {
  size_t a = spec.rfind(':'), b = spec.rfind(':', a - 1);
  std::string path = spec.substr(0, b);
  std::vector<std::string> dt = Split(spec.substr(b + 1, a - b - 1), '.');
  std::vector<int64_t> shape;
  for (const std::string& d : Split(spec.substr(a + 1), ',')) {
    if (!d.empty()) shape.push_back(std::stoll(d));
  }
  DLDataType dtype{static_cast<uint8_t>(std::stoi(dt[0])), static_cast<uint8_t>(std::stoi(dt[1])),
                   static_cast<uint16_t>(std::stoi(dt[2]))};
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(AlignedCPUAlloc(), ffi::Shape(shape), dtype, DLDevice{kDLCPU, 0});
  std::ifstream f(path, std::ios::binary);
  f.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(ffi::GetDataSize(*t.GetDLTensorPtr())));
  if (!f) throw std::runtime_error("cannot read " + path);
  return t;
}

static void WriteOutput(const ffi::Tensor& t, const std::string& dir, size_t k) {
  std::string base = dir + "/out" + std::to_string(k);
  const DLTensor* dl = t.GetDLTensorPtr();
  std::ofstream(base + ".bin", std::ios::binary)
      .write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(ffi::GetDataSize(*dl)));
  std::ofstream meta(base + ".txt");
  meta << int(dl->dtype.code) << "." << int(dl->dtype.bits) << "." << dl->dtype.lanes << " ";
  for (int i = 0; i < dl->ndim; ++i) meta << (i ? "," : "") << dl->shape[i];
  meta << "\n";
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s model.so OUT_DIR path:code.bits.lanes:d0,d1,...\n", argv[0]);
    return 2;
  }
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    ffi::Function run = vm->GetFunction("main").value();
    std::vector<ffi::Any> args;
    for (int i = 3; i < argc; ++i) args.push_back(ReadInput(argv[i]));
    std::vector<ffi::AnyView> views(args.begin(), args.end());
    const char* runs_env = std::getenv("CG_IO_RUNNER_RUNS");
    const int runs = runs_env ? std::max(1, std::atoi(runs_env)) : 1;
    ffi::Any result;
    for (int r = 0; r < runs; ++r) {
      result = ffi::Any();  // release the previous outputs first, as a caller reusing one variable does
      run.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
      if (runs > 1 && r == 0) syscall(SYS_getpid, 0xC0FFEEL, 1000L);
    }
    if (runs > 1) {
      syscall(SYS_getpid, 0xC0FFEEL, 1001L);
      std::ifstream maps("/proc/self/maps");  // where the library was loaded: bench/arm attributes counts to kernels
      std::ofstream(std::string(argv[2]) + "/maps") << maps.rdbuf();
    }
    if (auto t = result.as<ffi::Tensor>()) {
      WriteOutput(*t, argv[2], 0);
    } else {
      ffi::Array<ffi::Tensor> outs = result.cast<ffi::Array<ffi::Tensor>>();
      for (size_t k = 0; k < outs.size(); ++k) WriteOutput(outs[k], argv[2], k);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "io_runner: %s\n", e.what());
    return 1;
  }
  return 0;
}
