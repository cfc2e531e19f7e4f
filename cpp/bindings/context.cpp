// pybind11 registration of the slot ring, the DWDP context and its registry (validation lives in cpp/src).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <tuple>
#include <vector>

#include "dwdp/context.h"
#include "dwdp/moe_layer.h"

namespace py = pybind11;

namespace {

using Triples = std::vector<std::tuple<uintptr_t, uint64_t, uint64_t>>;

std::shared_ptr<dwdp::DwdpContext> make_context(int num_experts, int num_slots,
                                                const std::vector<dwdp::ExpertPointers>& views,
                                                const std::vector<Triples>& slices, const std::vector<uintptr_t>& bases,
                                                int issue_mode, int step_mode) {
  dwdp::ContextSpec spec;
  spec.num_layers = static_cast<int>(slices.size());
  spec.num_slots = num_slots;
  spec.num_experts = num_experts;
  spec.views = views;
  for (const auto& layer : slices) {
    if (layer.empty()) {
      spec.plans.push_back(nullptr);
      continue;
    }
    std::vector<dwdp::CopySlice> v;
    for (const auto& [src, dst, n] : layer) v.push_back({src, dst, n});
    spec.plans.push_back(std::make_shared<dwdp::CopyPlan>(std::move(v)));
  }
  for (uintptr_t b : bases) spec.slot_bases.push_back(reinterpret_cast<void*>(b));
  spec.issue_mode = static_cast<dwdp::IssueMode>(issue_mode);
  spec.step_mode = static_cast<dwdp::StepMode>(step_mode);
  return std::make_shared<dwdp::DwdpContext>(std::move(spec));
}

}  // namespace

void register_context_bindings(py::module_& m) {
  py::register_exception<dwdp::ProtocolError>(m, "ProtocolError", PyExc_RuntimeError);
  py::class_<dwdp::Pull>(m, "Pull").def_readonly("layer", &dwdp::Pull::layer).def_readonly("slot", &dwdp::Pull::slot);
  py::class_<dwdp::Acquired>(m, "Acquired")
      .def_readonly("slot", &dwdp::Acquired::slot)
      .def_readonly("fresh", &dwdp::Acquired::fresh);
  py::class_<dwdp::Released>(m, "Released")
      .def_readonly("slot", &dwdp::Released::slot)
      .def_property_readonly("pull", [](const dwdp::Released& r) -> py::object {
        return r.has_pull ? py::cast(r.pull) : py::none();
      });
  py::class_<dwdp::SlotRing>(m, "SlotRing", "the prefetch slot ring without CUDA (mirrors prefetch.Prefetcher)")
      .def(py::init<int, int>(), py::arg("num_layers"), py::arg("num_slots"))
      .def("begin_step", &dwdp::SlotRing::begin_step)
      .def("acquire", &dwdp::SlotRing::acquire, py::arg("layer"))
      .def("release", &dwdp::SlotRing::release, py::arg("layer"))
      .def("end_step", &dwdp::SlotRing::end_step)
      .def("abort_step", &dwdp::SlotRing::abort_step,
           "end a failed step and empty the ring; the slot acquired but not released, or -1")
      .def("slot_of", &dwdp::SlotRing::slot_of, py::arg("layer"))
      .def_property_readonly("in_step", &dwdp::SlotRing::in_step)
      .def_property_readonly("next_layer", &dwdp::SlotRing::next_layer);

  py::class_<dwdp::ExpertPointers>(m, "ExpertPointers", "one layer's composite experts through one slot (addresses)")
      .def(py::init([](uintptr_t w13, uintptr_t w2, uintptr_t w13_scale, uintptr_t w2_scale, int64_t w13_stride,
                       int64_t w2_stride, int64_t w13_scale_stride, int64_t w2_scale_stride) {
             dwdp::ExpertPointers p;
             p.w13 = reinterpret_cast<const void*>(w13);
             p.w2 = reinterpret_cast<const void*>(w2);
             p.w13_scale = reinterpret_cast<const float*>(w13_scale);
             p.w2_scale = reinterpret_cast<const float*>(w2_scale);
             p.w13_stride = w13_stride, p.w2_stride = w2_stride;
             p.w13_scale_stride = w13_scale_stride, p.w2_scale_stride = w2_scale_stride;
             return p;
           }),
           py::arg("w13"), py::arg("w2"), py::arg("w13_scale"), py::arg("w2_scale"), py::arg("w13_stride"),
           py::arg("w2_stride"), py::arg("w13_scale_stride"), py::arg("w2_scale_stride"));
  py::class_<dwdp::DwdpContext, std::shared_ptr<dwdp::DwdpContext>>(m, "DwdpContext")
      .def(py::init(&make_context), py::arg("num_experts"), py::arg("num_slots"), py::arg("views"),
           py::arg("slices"), py::arg("slot_bases"), py::arg("issue_mode"), py::arg("step_mode"),
           "views: [layer * num_slots + slot]; slices: per layer (source address, slot offset, nbytes) triples")
      .def("begin_step", &dwdp::DwdpContext::begin_step)
      .def("end_step", &dwdp::DwdpContext::end_step)
      .def(
          "acquire", [](dwdp::DwdpContext& c, int layer, uintptr_t stream) {
            c.acquire(layer, reinterpret_cast<cudaStream_t>(stream));
          },
          py::arg("layer"), py::arg("stream"))
      .def(
          "release", [](dwdp::DwdpContext& c, int layer, uintptr_t stream) {
            c.release(layer, reinterpret_cast<cudaStream_t>(stream));
          },
          py::arg("layer"), py::arg("stream"))
      .def(
          "acquire_timed",
          [](dwdp::DwdpContext& c, int layer, uintptr_t stream, bool timed) {
            const auto t = c.acquire_timed(layer, reinterpret_cast<cudaStream_t>(stream), timed);
            return std::make_tuple(t.slot, t.fresh, t.record);
          },
          py::arg("layer"), py::arg("stream"), py::arg("timed"),
          "acquire, also timing compute's wait for the pull: (slot, fresh, record id for wait_seconds or -1)")
      .def("wait_seconds", &dwdp::DwdpContext::wait_seconds, py::arg("record"),
           py::call_guard<py::gil_scoped_release>(), "seconds compute waited at that acquire (blocks until known)")
      .def(
          "abort_step",
          [](dwdp::DwdpContext& c, uintptr_t stream) { c.abort_step(reinterpret_cast<cudaStream_t>(stream)); },
          py::arg("stream"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("in_step", &dwdp::DwdpContext::in_step)
      .def("synchronize", &dwdp::DwdpContext::synchronize, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("pulls_issued", &dwdp::DwdpContext::pulls_issued);
  m.def("register_context", &dwdp::register_context, py::arg("context_id"), py::arg("context"));
  m.def("unregister_context", &dwdp::unregister_context, py::arg("context_id"));
  m.def("registered_contexts", &dwdp::registered_contexts);
  m.def(
      "moe_forward",
      [](int num_experts, int hidden, int inter, int top_k, int routing, int dtype, const dwdp::ExpertPointers& w,
         uintptr_t x, uintptr_t route_a, uintptr_t route_b, int64_t tokens, uintptr_t out, uintptr_t stream) {
        dwdp::MoeLayerShape s{num_experts, hidden, inter, top_k, static_cast<dwdp::Routing>(routing),
                              static_cast<dwdp::ExpertDtype>(dtype)};
        if (*dwdp::check_shape(s)) throw std::invalid_argument(dwdp::check_shape(s));
        const auto lay = dwdp::moe_workspace_layout(s, tokens);
        if (lay.status != cudaSuccess) throw std::runtime_error(cudaGetErrorString(lay.status));
        void* ws = nullptr;
        cudaError_t err = cudaMallocAsync(&ws, lay.total, reinterpret_cast<cudaStream_t>(stream));
        if (err == cudaSuccess)
          err = dwdp::moe_forward(s, w, reinterpret_cast<const void*>(x), reinterpret_cast<const void*>(route_a),
                                  reinterpret_cast<const void*>(route_b), tokens, reinterpret_cast<void*>(out), ws,
                                  lay.total, reinterpret_cast<cudaStream_t>(stream));
        if (ws) cudaFreeAsync(ws, reinterpret_cast<cudaStream_t>(stream));
        if (err != cudaSuccess) throw std::runtime_error(std::string("moe_forward: ") + cudaGetErrorString(err));
      },
      "one MoE layer's forward on raw device pointers (the plugin's enqueue minus the context)");
}
