// Drives the DwdpMoe plugin through its IPluginV3 interfaces the way TensorRT does, from a shared library the
// tests load with ctypes. Built by tests/test_trt_plugin.py against the TensorRT headers.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

// A constant-folding expression builder: enough for a plugin whose output shape is built from its inputs'.
class Expr : public IDimensionExpr {
 public:
  struct Impl : apiv::VDimensionExpr {
    int64_t v;
    bool constant;
    bool isConstant() const override { return constant; }
    int64_t getConstantValue() const override { return v; }
    bool isSizeTensor() const override { return false; }
  } impl;
  Expr(int64_t v, bool constant) : impl{} {
    impl.v = v, impl.constant = constant;
    mImpl = &impl;
  }
  ~Expr() noexcept override = default;
};

class Builder : public IExprBuilder {
 public:
  struct Impl : apiv::VExprBuilder {
    std::vector<std::unique_ptr<Expr>>* pool;
    IDimensionExpr const* constant(int64_t value) override {
      pool->emplace_back(new Expr(value, true));
      return pool->back().get();
    }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override {
      pool->emplace_back(new Expr(-1, false));
      return pool->back().get();
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
      return nullptr;
    }
  } impl;
  std::vector<std::unique_ptr<Expr>> pool;
  Builder() {
    impl.pool = &pool;
    mImpl = &impl;
  }
  ~Builder() noexcept override = default;
  IDimensionExpr const* symbol() {
    pool.emplace_back(new Expr(-1, false));
    return pool.back().get();
  }
};

std::string g_error;

int fail(const std::string& why) {
  g_error = why;
  return 1;
}

#define EXPECT(cond, why) \
  if (!(cond)) return fail(std::string(why) + " [" #cond "]")

using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);

IPluginCreatorV3One* load_creator(const char* lib) {
  void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    g_error = std::string("dlopen: ") + dlerror();
    return nullptr;
  }
  auto get = reinterpret_cast<GetCreators>(dlsym(h, "getCreators"));
  if (!get || !dlsym(h, "setLoggerFinder")) {
    g_error = "the library does not export getCreators and setLoggerFinder";
    return nullptr;
  }
  int32_t n = 0;
  IPluginCreatorInterface* const* list = get(n);
  if (n != 1 || list == nullptr || std::strcmp(list[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0) {
    g_error = "getCreators must return one IPluginCreatorV3One";
    return nullptr;
  }
  return static_cast<IPluginCreatorV3One*>(list[0]);
}

template <class T>
T* capability(IPluginV3* p, PluginCapabilityType t) {
  return static_cast<T*>(p->getCapabilityInterface(t));
}

const char* kNames[] = {"layer_index", "num_experts", "hidden_size", "intermediate_size",
                        "top_k",       "routing",     "dtype",       "context_id"};

// createPlugin from the 8 fields, leaving out field `skip` (-1: none).
IPluginV3* create(IPluginCreatorV3One* c, const int32_t* values, int skip = -1,
                  TensorRTPhase phase = TensorRTPhase::kBUILD) {
  std::vector<PluginField> f;
  for (int i = 0; i < 8; ++i)
    if (i != skip) f.emplace_back(kNames[i], &values[i], PluginFieldType::kINT32, 1);
  PluginFieldCollection fc{static_cast<int32_t>(f.size()), f.data()};
  return c->createPlugin("dwdp_moe", &fc, phase);
}

std::vector<int32_t> serialised(IPluginV3* p) {
  auto* rt = capability<IPluginV3OneRuntime>(p, PluginCapabilityType::kRUNTIME);
  const PluginFieldCollection* fc = rt->getFieldsToSerialize();
  std::vector<int32_t> out(8, -999);
  for (int i = 0; i < fc->nbFields; ++i)
    for (int k = 0; k < 8; ++k)
      if (std::strcmp(fc->fields[i].name, kNames[k]) == 0) out[k] = *static_cast<const int32_t*>(fc->fields[i].data);
  return out;
}

DynamicPluginTensorDesc desc(std::vector<int64_t> dims, DataType t) {
  DynamicPluginTensorDesc d{};
  d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) d.desc.dims.d[i] = dims[i], d.min.d[i] = dims[i], d.max.d[i] = dims[i],
                                           d.opt.d[i] = dims[i];
  d.min.nbDims = d.max.nbDims = d.opt.nbDims = d.desc.dims.nbDims;
  d.desc.type = t;
  d.desc.format = TensorFormat::kLINEAR;
  return d;
}

// The plugin's tensors for `tokens` rows as TensorRT describes them: inputs (hidden states, routing logits or
// precomputed expert ids, and with precomputed routing their weights), then the output; `pin`/`pout` are the
// same as the runtime phase sees them.
struct Io {
  bool pre;
  int nin;
  int64_t H, K, E;
  std::vector<DynamicPluginTensorDesc> io;
  PluginTensorDesc pin[3], pout;

  Io(const int32_t* values, int64_t tokens)
      : pre(values[5] == 2), nin(pre ? 3 : 2), H(values[2]), K(values[4]), E(values[1]) {
    io = {desc({tokens, H}, DataType::kBF16), desc({tokens, pre ? K : E}, pre ? DataType::kINT32 : DataType::kFLOAT)};
    if (pre) io.push_back(desc({tokens, K}, DataType::kFLOAT));
    io.push_back(desc({tokens, H}, DataType::kBF16));
    for (int i = 0; i < nin; ++i) pin[i] = io[i].desc;
    pout = io[nin].desc;
  }
  DynamicPluginTensorDesc* out() { return &io[nin]; }
};

}  // namespace

extern "C" const char* harness_error() { return g_error.c_str(); }

// Everything short of enqueue's device work; values: the 8 fields. Returns 0 or 1 (harness_error says why).
extern "C" int harness_interface_checks(const char* lib, const int32_t* values, int64_t tokens) {
  IPluginCreatorV3One* c = load_creator(lib);
  if (!c) return 1;
  EXPECT(std::strcmp(c->getPluginName(), "DwdpMoe") == 0 && std::strcmp(c->getPluginVersion(), "1") == 0,
         "creator name/version");
  const PluginFieldCollection* names = c->getFieldNames();
  EXPECT(names->nbFields == 8, "creator lists 8 fields");
  for (int i = 0; i < 8; ++i) EXPECT(std::strcmp(names->fields[i].name, kNames[i]) == 0, "field order");
  for (int skip = 0; skip < 8; ++skip) EXPECT(create(c, values, skip) == nullptr, "a missing field is refused");
  int32_t bad[8];
  std::memcpy(bad, values, sizeof(bad));
  bad[4] = values[1] + 1;  // top_k > num_experts
  EXPECT(create(c, bad, -1) == nullptr, "top_k > num_experts is refused");

  std::unique_ptr<IPluginV3> p(create(c, values));
  EXPECT(p != nullptr, "createPlugin with valid fields");
  auto* core = capability<IPluginV3OneCore>(p.get(), PluginCapabilityType::kCORE);
  auto* build = capability<IPluginV3OneBuild>(p.get(), PluginCapabilityType::kBUILD);
  auto* rt = capability<IPluginV3OneRuntime>(p.get(), PluginCapabilityType::kRUNTIME);
  EXPECT(core && build && rt, "all three capabilities");
  EXPECT(std::strcmp(core->getPluginNamespace(), "dwdp") == 0, "namespace");
  EXPECT(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0, "build capability kind");

  // Serialisation round trip and clone.
  std::vector<int32_t> want(values, values + 8);
  EXPECT(serialised(p.get()) == want, "getFieldsToSerialize returns the fields");
  const std::vector<int32_t> ser = serialised(p.get());
  std::unique_ptr<IPluginV3> q(create(c, ser.data()));
  EXPECT(q && serialised(q.get()) == want, "createPlugin(getFieldsToSerialize()) round-trips");
  std::unique_ptr<IPluginV3> cl(p->clone());
  EXPECT(cl && serialised(cl.get()) == want, "clone keeps the fields");
  std::unique_ptr<IPluginV3> at(rt->attachToContext(nullptr));
  EXPECT(at && serialised(at.get()) == want, "attachToContext keeps the fields");

  Io t(values, tokens);
  const bool pre = t.pre;
  const int nin = t.nin;
  const int64_t E = t.E, H = t.H, K = t.K;
  EXPECT(build->getNbOutputs() == 1, "one output");
  DataType in_types[3] = {DataType::kBF16, pre ? DataType::kINT32 : DataType::kFLOAT, DataType::kFLOAT};
  DataType out_type = DataType::kFLOAT;
  EXPECT(build->getOutputDataTypes(&out_type, 1, in_types, nin) == 0 && out_type == DataType::kBF16, "output bf16");
  DataType wrong[3] = {DataType::kHALF, in_types[1], in_types[2]};
  EXPECT(build->getOutputDataTypes(&out_type, 1, wrong, nin) != 0, "fp16 hidden states are refused");

  Builder eb;
  DimsExprs ins[3], out{};
  ins[0].nbDims = 2, ins[0].d[0] = eb.symbol(), ins[0].d[1] = eb.constant(H);
  for (int i = 1; i < nin; ++i) ins[i].nbDims = 2, ins[i].d[0] = ins[0].d[0], ins[i].d[1] = eb.constant(pre ? K : E);
  EXPECT(build->getOutputShapes(ins, nin, nullptr, 0, &out, 1, eb) == 0, "getOutputShapes");
  EXPECT(out.nbDims == 2 && out.d[0] == ins[0].d[0] && out.d[1]->isConstant() && out.d[1]->getConstantValue() == H,
         "output shape = hidden states' shape");

  std::vector<DynamicPluginTensorDesc>& io = t.io;
  for (int pos = 0; pos <= nin; ++pos) EXPECT(build->supportsFormatCombination(pos, io.data(), nin, 1), "format ok");
  auto swapped = io;
  swapped[0].desc.type = DataType::kFLOAT;
  EXPECT(!build->supportsFormatCombination(0, swapped.data(), nin, 1), "fp32 hidden states refused");
  swapped = io;
  swapped[1].desc.format = TensorFormat::kCHW32;
  EXPECT(!build->supportsFormatCombination(1, swapped.data(), nin, 1), "non-linear format refused");
  EXPECT(build->configurePlugin(io.data(), nin, &io[nin], 1) == 0, "configurePlugin with matching shapes");
  auto badshape = io;
  badshape[0].desc.dims.d[1] = H + 8;
  EXPECT(build->configurePlugin(badshape.data(), nin, &io[nin], 1) != 0, "a hidden size mismatch is refused");
  badshape = io;
  badshape[1].desc.dims.d[1] = (pre ? K : E) + 1;
  EXPECT(build->configurePlugin(badshape.data(), nin, &io[nin], 1) != 0, "a routing width mismatch is refused");
  EXPECT(rt->onShapeChange(t.pin, nin, &t.pout, 1) == 0, "onShapeChange");
  EXPECT(rt->setTactic(0) == 0, "default tactic");
  return 0;
}

// Workspace bytes for `tokens` rows (0 where the GEMM workspace cannot be queried, e.g. without a GPU).
extern "C" int64_t harness_workspace(const char* lib, const int32_t* values, int64_t tokens) {
  IPluginCreatorV3One* c = load_creator(lib);
  if (!c) return -1;
  std::unique_ptr<IPluginV3> p(create(c, values));
  if (!p) return -1;
  Io t(values, tokens);
  return static_cast<int64_t>(
      capability<IPluginV3OneBuild>(p.get(), PluginCapabilityType::kBUILD)->getWorkspaceSize(t.io.data(), t.nin,
                                                                                             t.out(), 1));
}

// The runtime path: createPlugin (runtime phase), attachToContext, onShapeChange, workspace, enqueue on `stream`.
// Returns enqueue's status (0 = success); inputs are device pointers.
extern "C" int harness_enqueue(const char* lib, const int32_t* values, int64_t tokens, const void* x,
                               const void* route_a, const void* route_b, void* out, void* stream) {
  IPluginCreatorV3One* c = load_creator(lib);
  if (!c) return -100;
  std::unique_ptr<IPluginV3> made(create(c, values, -1, TensorRTPhase::kRUNTIME));
  if (!made) return fail("createPlugin"), -101;
  std::unique_ptr<IPluginV3> p(
      capability<IPluginV3OneRuntime>(made.get(), PluginCapabilityType::kRUNTIME)->attachToContext(nullptr));
  auto* build = capability<IPluginV3OneBuild>(p.get(), PluginCapabilityType::kBUILD);
  auto* rt = capability<IPluginV3OneRuntime>(p.get(), PluginCapabilityType::kRUNTIME);
  Io t(values, tokens);
  if (rt->onShapeChange(t.pin, t.nin, &t.pout, 1) != 0) return fail("onShapeChange"), -102;
  const size_t ws_bytes = build->getWorkspaceSize(t.io.data(), t.nin, t.out(), 1);
  void* ws = nullptr;
  if (ws_bytes && cudaMalloc(&ws, ws_bytes) != cudaSuccess) return fail("cudaMalloc workspace"), -103;
  const void* ins[3] = {x, route_a, route_b};
  void* outs[1] = {out};
  const int rc = rt->enqueue(t.pin, &t.pout, ins, outs, ws, static_cast<cudaStream_t>(stream));
  cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
  cudaFree(ws);
  return rc;
}

namespace {

// TensorRT's logger, as the plugin finds it through setLoggerFinder: keeps the last message in g_error.
class LastMessage : public ILogger {
 public:
  void log(Severity, AsciiChar const* msg) noexcept override { g_error = msg; }
};

class Finder : public ILoggerFinder {
 public:
  ILogger* findLogger() override { return &logger; }
  LastMessage logger;
};

Finder g_finder;

}  // namespace

// enqueue while `stream` is being captured into a CUDA graph (what a runner's CUDA-graph mode does); the plugin's
// log goes to harness_error. Returns enqueue's status; inputs may be null (a refusal touches none).
extern "C" int harness_enqueue_captured(const char* lib, const int32_t* values, int64_t tokens, void* stream) {
  IPluginCreatorV3One* c = load_creator(lib);
  if (!c) return -100;
  void* h = dlopen(lib, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  auto set_finder = reinterpret_cast<void (*)(ILoggerFinder*)>(h ? dlsym(h, "setLoggerFinder") : nullptr);
  if (!set_finder) return fail("setLoggerFinder"), -104;
  set_finder(&g_finder);
  std::unique_ptr<IPluginV3> made(create(c, values, -1, TensorRTPhase::kRUNTIME));
  if (!made) return fail("createPlugin"), -101;
  auto* rt = capability<IPluginV3OneRuntime>(made.get(), PluginCapabilityType::kRUNTIME);
  Io t(values, tokens);
  const void* ins[3] = {nullptr, nullptr, nullptr};
  void* outs[1] = {nullptr};
  auto s = static_cast<cudaStream_t>(stream);
  if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return fail("begin capture"), -105;
  const int rc = rt->enqueue(t.pin, &t.pout, ins, outs, nullptr, s);
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(s, &graph);
  if (graph) cudaGraphDestroy(graph);
  set_finder(nullptr);
  if (end != cudaSuccess && rc == 0) return fail(std::string("end capture: ") + cudaGetErrorString(end)), -106;
  return rc;
}
