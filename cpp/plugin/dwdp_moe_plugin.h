// TensorRT plugin (IPluginV3, OneCore/OneBuild/OneRuntime) for one DWDP MoE layer. Its enqueue waits for the
// layer's pull, runs the layer on the composite experts of the process's DWDP context (found by context id in
// the core library's registry), then records done and issues the next pull. No Python on this path.
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#include "dwdp/moe_layer.h"

namespace dwdp::trt {

constexpr char kPluginName[] = "DwdpMoe";
constexpr char kPluginVersion[] = "1";
constexpr char kPluginNamespace[] = "dwdp";
// enqueue's one error for a stream under CUDA graph capture; names the options that turn graphs off.
constexpr char kCaptureRefusal[] =
    "the stream is being captured into a CUDA graph, and DWDP MoE layers cannot be replayed from one (a replay "
    "would reuse the capture's prefetch slots and pulls). Fix: run the engine without CUDA graphs: "
    "cuda_graph_mode=False in ModelRunnerCpp.from_dir / ModelRunner.from_dir (examples' run.py: leave out "
    "--cuda_graph_mode), and for LLM(backend=\"tensorrt\") / trtllm-serve: extended_runtime_perf_knob_config "
    "with cuda_graph_mode false";

// The plugin's fields, all INT32 scalars, in serialisation order.
struct MoePluginParams {
  int32_t layer_index = -1;
  int32_t context_id = 0;
  MoeLayerShape shape;
};

class DwdpMoePlugin final : public nvinfer1::IPluginV3,
                            public nvinfer1::IPluginV3OneCore,
                            public nvinfer1::IPluginV3OneBuild,
                            public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit DwdpMoePlugin(const MoePluginParams& params);
  DwdpMoePlugin(const DwdpMoePlugin& other);
  DwdpMoePlugin& operator=(const DwdpMoePlugin&) = delete;
  ~DwdpMoePlugin() override = default;

  const MoePluginParams& params() const { return params_; }
  // Inputs: hidden [.., H] bf16, then logits [.., E] fp32, or top-k ids [.., K] int32 and weights [.., K] fp32.
  int32_t num_inputs() const { return params_.shape.routing == Routing::kPrecomputed ? 3 : 2; }

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  const char* getPluginName() const noexcept override { return kPluginName; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // IPluginV3OneBuild
  int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                          const nvinfer1::DynamicPluginTensorDesc* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             const nvinfer1::DataType* inputTypes, int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs, const nvinfer1::DimsExprs* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getNbOutputs() const noexcept override { return 1; }
  size_t getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t nbInputs,
                          const nvinfer1::DynamicPluginTensorDesc* outputs, int32_t nbOutputs) const noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nbInputs, const nvinfer1::PluginTensorDesc* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(const nvinfer1::PluginTensorDesc* inputDesc, const nvinfer1::PluginTensorDesc* outputDesc,
                  const void* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override;

 private:
  // Empty when the input descriptions fit the fields, else why not.
  std::string check_inputs(const nvinfer1::Dims* dims, const nvinfer1::DataType* types, int32_t nb) const;

  MoePluginParams params_;
  std::vector<int32_t> values_;  // backing store of the serialised fields
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection collection_{};
};

class DwdpMoePluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  DwdpMoePluginCreator();
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override { return &collection_; }
  const char* getPluginName() const noexcept override { return kPluginName; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

 private:
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection collection_{};
};

// Field collection -> params; returns an empty string or one sentence (field, value, problem).
std::string parse_fields(const nvinfer1::PluginFieldCollection& fc, MoePluginParams* out);

}  // namespace dwdp::trt
