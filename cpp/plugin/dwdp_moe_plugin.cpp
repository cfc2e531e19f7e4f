#include "dwdp_moe_plugin.h"

#include <cstdio>
#include <cstring>
#include <exception>

namespace dwdp::trt {
namespace {

using nvinfer1::DataType;
using nvinfer1::ILogger;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using nvinfer1::TensorFormat;

// Field names, in serialisation order (MoePluginParams).
constexpr const char* kFieldNames[] = {"layer_index", "num_experts", "hidden_size", "intermediate_size",
                                       "top_k",       "routing",     "dtype",       "context_id"};
constexpr int kNumFields = sizeof(kFieldNames) / sizeof(kFieldNames[0]);

nvinfer1::ILoggerFinder* g_logger_finder = nullptr;

void log(ILogger::Severity severity, const std::string& msg) {
  const std::string line = std::string(kPluginName) + ": " + msg;
  ILogger* logger = g_logger_finder ? g_logger_finder->findLogger() : nullptr;
  if (logger) logger->log(severity, line.c_str());
  else std::fprintf(stderr, "%s\n", line.c_str());
}

std::vector<int32_t> to_values(const MoePluginParams& p) {
  const auto& s = p.shape;
  return {p.layer_index, s.num_experts, s.hidden, s.inter, s.top_k, static_cast<int32_t>(s.routing),
          static_cast<int32_t>(s.dtype), p.context_id};
}

int64_t rows_of(const nvinfer1::Dims& d) {
  int64_t rows = 1;
  for (int i = 0; i + 1 < d.nbDims; ++i) rows *= d.d[i];
  return rows;
}

}  // namespace

std::string parse_fields(const nvinfer1::PluginFieldCollection& fc, MoePluginParams* out) {
  int32_t v[kNumFields];
  bool seen[kNumFields] = {};
  for (int32_t i = 0; i < fc.nbFields; ++i) {
    const PluginField& f = fc.fields[i];
    int k = 0;
    while (k < kNumFields && (f.name == nullptr || std::strcmp(f.name, kFieldNames[k]) != 0)) ++k;
    if (k == kNumFields) return std::string("unknown field '") + (f.name ? f.name : "(null)") + "'";
    if (f.type != PluginFieldType::kINT32 || f.length != 1 || f.data == nullptr)
      return std::string("field ") + kFieldNames[k] + " must be one INT32";
    std::memcpy(&v[k], f.data, sizeof(int32_t));
    seen[k] = true;
  }
  for (int k = 0; k < kNumFields; ++k)
    if (!seen[k]) return std::string("field ") + kFieldNames[k] + " is missing";
  MoePluginParams p;
  p.layer_index = v[0];
  p.shape.num_experts = v[1];
  p.shape.hidden = v[2];
  p.shape.inter = v[3];
  p.shape.top_k = v[4];
  p.shape.routing = static_cast<Routing>(v[5]);
  p.shape.dtype = static_cast<ExpertDtype>(v[6]);
  p.context_id = v[7];
  if (p.layer_index < 0) return "field layer_index=" + std::to_string(p.layer_index) + ": must be >= 0";
  const char* why = check_shape(p.shape);
  if (*why) return std::string("fields num_experts=") + std::to_string(v[1]) + " hidden_size=" + std::to_string(v[2]) +
                   " intermediate_size=" + std::to_string(v[3]) + " top_k=" + std::to_string(v[4]) + " routing=" +
                   std::to_string(v[5]) + " dtype=" + std::to_string(v[6]) + ": " + why;
  *out = p;
  return "";
}

DwdpMoePlugin::DwdpMoePlugin(const MoePluginParams& params) : params_(params) {}

DwdpMoePlugin::DwdpMoePlugin(const DwdpMoePlugin& other) : params_(other.params_) {}

nvinfer1::IPluginCapability* DwdpMoePlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* DwdpMoePlugin::clone() noexcept {
  try {
    return new DwdpMoePlugin(*this);
  } catch (const std::exception& e) {
    log(ILogger::Severity::kERROR, std::string("clone failed: ") + e.what());
    return nullptr;
  }
}

std::string DwdpMoePlugin::check_inputs(const nvinfer1::Dims* dims, const DataType* types, int32_t nb) const {
  const auto& s = params_.shape;
  if (nb != num_inputs())
    return "expected " + std::to_string(num_inputs()) + " inputs for routing " +
           std::to_string(static_cast<int>(s.routing)) + ", got " + std::to_string(nb);
  if (types && types[0] != DataType::kBF16) return "hidden states must be BF16";
  const nvinfer1::Dims& x = dims[0];
  if (x.nbDims < 2) return "hidden states must have rank >= 2 ([tokens, hidden] or [batch, seq, hidden])";
  // NOTE: -1 is a dynamic dimension at build time; only known sizes are checked.
  auto mismatch = [](int64_t got, int64_t want) { return got >= 0 && got != want; };
  if (mismatch(x.d[x.nbDims - 1], s.hidden))
    return "hidden states' last dimension is " + std::to_string(x.d[x.nbDims - 1]) + ", field hidden_size is " +
           std::to_string(s.hidden);
  const int64_t last_route = s.routing == Routing::kPrecomputed ? s.top_k : s.num_experts;
  for (int32_t i = 1; i < nb; ++i) {
    const nvinfer1::Dims& r = dims[i];
    if (r.nbDims != x.nbDims) return "input " + std::to_string(i) + " must have the hidden states' rank";
    for (int j = 0; j + 1 < x.nbDims; ++j)
      if (r.d[j] >= 0 && x.d[j] >= 0 && r.d[j] != x.d[j])
        return "input " + std::to_string(i) + " has other leading dimensions than the hidden states";
    if (mismatch(r.d[r.nbDims - 1], last_route))
      return "input " + std::to_string(i) + "'s last dimension is " + std::to_string(r.d[r.nbDims - 1]) +
             (s.routing == Routing::kPrecomputed ? ", field top_k is " : ", field num_experts is ") +
             std::to_string(last_route);
  }
  if (types) {
    if (s.routing == Routing::kPrecomputed) {
      if (types[1] != DataType::kINT32 || types[2] != DataType::kFLOAT)
        return "top-k ids must be INT32 and top-k weights FLOAT";
    } else if (types[1] != DataType::kFLOAT) {
      return "router logits must be FLOAT (TensorRT-LLM's router runs in fp32)";
    }
  }
  return "";
}

int32_t DwdpMoePlugin::configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                                       const nvinfer1::DynamicPluginTensorDesc* out, int32_t nbOutputs) noexcept {
  if (nbOutputs != 1 || nbInputs < 1 || nbInputs > 3) return -1;
  nvinfer1::Dims dims[3];
  DataType types[3];
  for (int32_t i = 0; i < nbInputs; ++i) dims[i] = in[i].desc.dims, types[i] = in[i].desc.type;
  const std::string why = check_inputs(dims, types, nbInputs);
  if (!why.empty()) {
    log(ILogger::Severity::kERROR, "layer " + std::to_string(params_.layer_index) + ": " + why);
    return -1;
  }
  return out[0].desc.type == DataType::kBF16 ? 0 : -1;
}

int32_t DwdpMoePlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, const DataType* inputTypes,
                                          int32_t nbInputs) const noexcept {
  if (nbOutputs != 1 || nbInputs != num_inputs() || inputTypes[0] != DataType::kBF16) return -1;
  outputTypes[0] = DataType::kBF16;
  return 0;
}

int32_t DwdpMoePlugin::getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs,
                                       const nvinfer1::DimsExprs*, int32_t, nvinfer1::DimsExprs* outputs,
                                       int32_t nbOutputs, nvinfer1::IExprBuilder&) noexcept {
  if (nbOutputs != 1 || nbInputs != num_inputs()) return -1;
  outputs[0] = inputs[0];  // the layer maps hidden states to hidden states
  return 0;
}

bool DwdpMoePlugin::supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut,
                                              int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (nbInputs != num_inputs() || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs) return false;
  const auto& d = inOut[pos].desc;
  if (d.format != TensorFormat::kLINEAR) return false;
  if (pos == 0 || pos == nbInputs) return d.type == DataType::kBF16;
  if (params_.shape.routing == Routing::kPrecomputed && pos == 1) return d.type == DataType::kINT32;
  return d.type == DataType::kFLOAT;
}

size_t DwdpMoePlugin::getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t nbInputs,
                                       const nvinfer1::DynamicPluginTensorDesc*, int32_t) const noexcept {
  if (nbInputs < 1) return 0;
  const MoeWorkspace lay = moe_workspace_layout(params_.shape, rows_of(inputs[0].max));
  if (lay.status != cudaSuccess) {
    log(ILogger::Severity::kERROR, std::string("GEMM workspace query failed: ") + cudaGetErrorString(lay.status));
    return 0;
  }
  return lay.total;
}

int32_t DwdpMoePlugin::onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nbInputs,
                                     const nvinfer1::PluginTensorDesc*, int32_t nbOutputs) noexcept {
  if (nbOutputs != 1 || nbInputs < 1 || nbInputs > 3) return -1;
  nvinfer1::Dims dims[3];
  DataType types[3];
  for (int32_t i = 0; i < nbInputs; ++i) dims[i] = in[i].dims, types[i] = in[i].type;
  const std::string why = check_inputs(dims, types, nbInputs);
  if (!why.empty()) log(ILogger::Severity::kERROR, "layer " + std::to_string(params_.layer_index) + ": " + why);
  return why.empty() ? 0 : -1;
}

int32_t DwdpMoePlugin::enqueue(const nvinfer1::PluginTensorDesc* inputDesc, const nvinfer1::PluginTensorDesc*,
                               const void* const* inputs, void* const* outputs, void* workspace,
                               cudaStream_t stream) noexcept {
  const int layer = params_.layer_index;
  auto fail = [layer](const std::string& why) {
    log(ILogger::Severity::kERROR, "layer " + std::to_string(layer) + ": " + why);
    return -1;
  };
  try {
    // NOTE: enqueue does host work on every call (takes this layer's slot, releases it, which issues the next pull).
    // A CUDA graph replay repeats the captured slot pointers and pulls instead, so a layer could read another
    // layer's experts without any error: refuse capture before anything is enqueued.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    const cudaError_t query = cudaStreamGetCaptureInfo(stream, &capture);
    if (query != cudaSuccess) return fail(std::string("stream capture query: ") + cudaGetErrorString(query));
    if (capture != cudaStreamCaptureStatusNone) return fail(kCaptureRefusal);
    auto ctx = find_context(params_.context_id);
    if (!ctx)
      return fail("no DWDP context " + std::to_string(params_.context_id) +
                  " in this process: set it up before running the engine");
    if (ctx->num_experts() != params_.shape.num_experts)
      return fail("the DWDP context holds " + std::to_string(ctx->num_experts()) + " experts, the plugin expects " +
                  std::to_string(params_.shape.num_experts));
    const int64_t tokens = rows_of(inputDesc[0].dims);
    const MoeWorkspace lay = moe_workspace_layout(params_.shape, tokens);
    if (lay.status != cudaSuccess) return fail(std::string("workspace query: ") + cudaGetErrorString(lay.status));
    const ExpertPointers& w = ctx->acquire(layer, stream);
    const bool pre = params_.shape.routing == Routing::kPrecomputed;
    const cudaError_t err = moe_forward(params_.shape, w, inputs[0], inputs[1], pre ? inputs[2] : nullptr, tokens,
                                        outputs[0], workspace, lay.total, stream);
    ctx->release(layer, stream);  // NOTE: even after a failed forward, so the ring stays in step
    if (err != cudaSuccess) return fail(std::string("MoE forward: ") + cudaGetErrorString(err));
    return 0;
  } catch (const std::exception& e) {
    return fail(e.what());
  }
}

nvinfer1::IPluginV3* DwdpMoePlugin::attachToContext(nvinfer1::IPluginResourceContext*) noexcept { return clone(); }

const nvinfer1::PluginFieldCollection* DwdpMoePlugin::getFieldsToSerialize() noexcept {
  values_ = to_values(params_);
  fields_.clear();
  for (int k = 0; k < kNumFields; ++k) fields_.emplace_back(kFieldNames[k], &values_[k], PluginFieldType::kINT32, 1);
  collection_.nbFields = static_cast<int32_t>(fields_.size());
  collection_.fields = fields_.data();
  return &collection_;
}

DwdpMoePluginCreator::DwdpMoePluginCreator() {
  for (int k = 0; k < kNumFields; ++k) fields_.emplace_back(kFieldNames[k], nullptr, PluginFieldType::kINT32, 1);
  collection_.nbFields = static_cast<int32_t>(fields_.size());
  collection_.fields = fields_.data();
}

nvinfer1::IPluginV3* DwdpMoePluginCreator::createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                                        nvinfer1::TensorRTPhase) noexcept {
  try {
    MoePluginParams p;
    const std::string why = fc ? parse_fields(*fc, &p) : "no field collection";
    if (!why.empty()) {
      log(ILogger::Severity::kERROR, std::string(name ? name : "(unnamed)") + ": " + why);
      return nullptr;
    }
    return new DwdpMoePlugin(p);
  } catch (const std::exception& e) {
    log(ILogger::Severity::kERROR, std::string("createPlugin failed: ") + e.what());
    return nullptr;
  }
}

}  // namespace dwdp::trt

// Entry points TensorRT's IPluginRegistry::loadLibrary looks up.
extern "C" TENSORRTAPI void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { dwdp::trt::g_logger_finder = finder; }

extern "C" TENSORRTAPI nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static dwdp::trt::DwdpMoePluginCreator creator;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
  nbCreators = 1;
  return creators;
}
