// rebirth-time: time Caffe nets' forward passes where they will run (this machine, qemu, a phone)
// and print one JSON document on stdout, in the terms `rebirth bench --device cpu` reports.
//
//   rebirth-time MODEL.prototxt [MODEL2.prototxt ...] [--weights W ...] [--runs 50] [--warmup 5]
//                [--threads N] [--batch B] [--layers] [--seed S] [--cooldown SECONDS]
//
// Method (the same as deeprebirth/engine/cpu.py and bench.py):
//  * every net is created in TEST phase, with its --weights (one per model, in order) or random
//    weights filled here (He-scaled normal weights, BatchNorm statistics with positive variances,
//    Scale around 1), and random input, uniform in [-1, 1);
//  * memory, before any timing: the kernel's peak-RSS mark is reset (/proc/self/clear_refs), the
//    RSS read, the net created, every parameter and input written and two forward passes run; the
//    net's peak_rss_bytes is VmHWM minus that RSS. allocated_bytes counts the distinct data
//    buffers behind the net's blobs (Split tops share their bottom's buffer and count once);
//  * timing: warm-up rounds, then timed rounds; in every round each model in turn makes one whole
//    forward pass (Net::ForwardFromTo(0, last)) and, with --layers, one pass of per-layer calls
//    (ForwardFromTo(i, i), each timed on its own), so several models are interleaved run by run.
//    The clock is std::chrono::steady_clock.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/layer.hpp"
#include "caffe/net.hpp"
#include "timing_common.h"  // beside this file: the command line, memory, clock and JSON helpers

using caffe::Blob;
using caffe::Net;
using std::string;
using std::vector;
using timing::List;
using timing::Num;
using timing::Quote;

// OpenBLAS's thread control, when the program is linked with OpenBLAS (weak: absent otherwise).
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" int openblas_get_num_threads(void) __attribute__((weak));

namespace {

const char kUsage[] =
    "usage: rebirth-time MODEL.prototxt [MODEL2.prototxt ...] [--weights W ...] [--runs 50]\n"
    "                    [--warmup 5] [--threads N] [--batch B] [--layers] [--seed S] [--cooldown S]\n"
    "Times forward passes of Caffe nets on random input and prints JSON on stdout.\n";

struct Options : timing::Options {
  vector<string> weights;
  int batch = 0;
  bool layers = false;
};

Options ParseArgs(int argc, char** argv) {
  Options o;
  timing::Args args("rebirth-time", kUsage, argc, argv);
  while (args.Next()) {
    if (args.Is("--weights", "-w")) {
      o.weights.push_back(args.Value());
    } else if (args.Is("--batch", "-b")) {
      o.batch = args.Int(1);
    } else if (args.Is("--layers")) {
      o.layers = true;
    } else {
      timing::ReadCommon(&args, &o);
    }
  }
  if (o.models.empty()) args.Fail(string("no MODEL.prototxt given\n") + kUsage);
  if (!o.weights.empty() && o.weights.size() != o.models.size())
    args.Fail("--weights was given " + std::to_string(o.weights.size()) + " time(s) for " +
              std::to_string(o.models.size()) + " model(s): give it once per model, in order, or not at all");
  for (const string& f : o.models)
    if (!std::ifstream(f).good()) args.Fail(f + ": cannot read this file");
  for (const string& f : o.weights)
    if (!std::ifstream(f).good()) args.Fail(f + ": cannot read this file");
  return o;
}

// ---- filling -------------------------------------------------------------------------------

void FillUniform(Blob<float>* blob, float lo, float hi, std::mt19937* rng) {
  std::uniform_real_distribution<float> u(lo, hi);
  float* p = blob->mutable_cpu_data();
  for (int i = 0; i < blob->count(); ++i) p[i] = u(*rng);
}

void FillNormal(Blob<float>* blob, float mean, float std, std::mt19937* rng) {
  std::normal_distribution<float> d(mean, std);
  float* p = blob->mutable_cpu_data();
  for (int i = 0; i < blob->count(); ++i) p[i] = d(*rng);
}

// Random weights with the value ranges of trained nets (as engine/pycaffe.random_weights makes).
void FillRandomWeights(Net<float>* net, std::mt19937* rng) {
  for (const auto& layer : net->layers()) {
    const string type = layer->type();
    auto& blobs = layer->blobs();
    for (size_t i = 0; i < blobs.size(); ++i) {
      Blob<float>* b = blobs[i].get();
      if (b->count() == 0) continue;
      if (type == "BatchNorm") {
        if (i == 0) FillNormal(b, 0.f, 0.2f, rng);
        else if (i == 1) FillUniform(b, 0.3f, 1.5f, rng);
        else FillUniform(b, 1.f, 1.f, rng);
      } else if ((type == "Scale" || type == "PReLU") && i == 0) {
        FillUniform(b, 0.5f, 1.5f, rng);
      } else if (i == 0 && b->num_axes() > 1) {
        int fan_in = b->count() / b->shape(0);
        FillNormal(b, 0.f, std::sqrt(2.f / std::max(1, fan_in)), rng);
      } else {
        FillNormal(b, 0.f, 0.1f, rng);
      }
    }
  }
}

void FillInputs(Net<float>* net, std::mt19937* rng) {
  for (Blob<float>* b : net->input_blobs()) FillUniform(b, -1.f, 1.f, rng);
}

// ---- one model -----------------------------------------------------------------------------

struct Model {
  string path, weights;
  Net<float>* net = nullptr;
  timing::Memory memory;
  long long allocated = 0;
  vector<double> forward_ms;
  vector<vector<double>> layers_ms;  // [run][layer]
};

void Open(Model* m, const Options& o, std::mt19937* rng) {
  m->memory.Start();
  m->net = new Net<float>(m->path, caffe::TEST);
  if (o.batch > 0) {
    for (Blob<float>* b : m->net->input_blobs()) {
      vector<int> shape = b->shape();
      if (!shape.empty()) shape[0] = o.batch;
      b->Reshape(shape);
    }
    m->net->Reshape();
  }
  FillRandomWeights(m->net, rng);  // touches every parameter page, as the CPU probe does
  FillInputs(m->net, rng);
  const int last = static_cast<int>(m->net->layers().size()) - 1;
  m->net->ForwardFromTo(0, last);
  m->net->ForwardFromTo(0, last);
  m->memory.Stop();
  // Distinct data buffers (shared ones, e.g. Split tops, count once).
  std::set<const void*> seen;
  for (const auto& b : m->net->blobs()) {
    if (b->count() == 0) continue;
    const void* p = b->cpu_data();
    if (seen.insert(p).second) m->allocated += static_cast<long long>(b->count()) * sizeof(float);
  }
  if (!m->weights.empty()) m->net->CopyTrainedLayersFrom(m->weights);
}

string ModelJson(const Model& m, const Options& o) {
  Net<float>& net = *m.net;
  std::ostringstream js;
  js << "{\"model\": " << Quote(m.path) << ", \"weights\": "
     << Quote(m.weights.empty() ? "random (seed " + std::to_string(o.seed) + ", filled on the device)" : m.weights);
  vector<string> types;
  for (const auto& l : net.layers()) types.push_back(l->type());
  js << ", \"layer_names\": " << List(net.layer_names(), Quote) << ", \"layer_types\": " << List(types, Quote);
  js << ", \"inputs\": " << List(net.input_blobs(), [&](Blob<float>* b) {
    for (size_t i = 0; i < net.blobs().size(); ++i)
      if (net.blobs()[i].get() == b) return Quote(net.blob_names()[i]);
    return string("null");
  });
  js << ", \"blob_shapes\": {";
  for (size_t i = 0; i < net.blobs().size(); ++i)
    js << (i ? ", " : "") << Quote(net.blob_names()[i]) << ": "
       << List(net.blobs()[i]->shape(), [](int d) { return std::to_string(d); });
  js << "}, " << timing::TimesJson(m.forward_ms);
  js << ", \"layers\": [";
  if (!m.layers_ms.empty()) {
    for (size_t j = 0; j < net.layers().size(); ++j) {
      vector<double> col;
      for (const auto& run : m.layers_ms) col.push_back(run[j]);
      js << (j ? ", " : "") << "{\"name\": " << Quote(net.layer_names()[j]) << ", \"type\": " << Quote(types[j])
         << ", \"ms\": " << Num(timing::Median(col)) << ", \"min_ms\": " << Num(*std::min_element(col.begin(), col.end()))
         << "}";
    }
  }
  js << "], \"layers_runs_ms\": " << List(m.layers_ms, [](const vector<double>& r) { return List(r, Num); });
  js << ", \"allocated_bytes\": " << m.allocated << ", "
     << timing::MemoryJson(m.memory,
                           "peak RSS growth (VmHWM after a /proc/self/clear_refs reset, minus the RSS before the "
                           "net was created) while creating the net and running 2 forward passes, in rebirth-time",
                           "RSS growth (/proc/self/statm after creating the net and running 2 forward passes, "
                           "minus before), in rebirth-time; the peak mark could not be reset here")
     << "}";
  return js.str();
}

}  // namespace

int main(int argc, char** argv) {
  Options o = ParseArgs(argc, argv);
  // glog: to stderr, never to log files (Android has no /tmp), quiet unless GLOG_minloglevel says.
  FLAGS_logtostderr = 1;
  if (!std::getenv("GLOG_minloglevel")) FLAGS_minloglevel = 2;
  google::InitGoogleLogging(argv[0]);
  caffe::Caffe::set_mode(caffe::Caffe::CPU);
  if (o.threads > 0 && openblas_set_num_threads) openblas_set_num_threads(o.threads);
  int threads = openblas_get_num_threads ? openblas_get_num_threads() : -1;

  std::mt19937 rng(o.seed);
  vector<Model> models(o.models.size());
  for (size_t k = 0; k < models.size(); ++k) {
    models[k].path = o.models[k];
    if (!o.weights.empty()) models[k].weights = o.weights[k];
    Open(&models[k], o, &rng);
  }

  timing::Rounds(o, models.size(), [&](size_t k, bool timed) {
    Model& m = models[k];
    Net<float>* net = m.net;
    const int n = static_cast<int>(net->layers().size());
    const double whole = timing::TimeMs([&] { net->ForwardFromTo(0, n - 1); });
    vector<double> per_layer;
    if (o.layers) {
      per_layer.resize(n);
      for (int i = 0; i < n; ++i) per_layer[i] = timing::TimeMs([&] { net->ForwardFromTo(i, i); });
    }
    if (timed) {
      m.forward_ms.push_back(whole);
      if (o.layers) m.layers_ms.push_back(per_layer);
    }
  });

  std::ostringstream head;
  head << "\"program\": \"rebirth-time\", \"format\": 1, \"clock\": " << Quote(timing::kClockName)
       << ", \"runs\": " << o.runs << ", \"warmup\": " << o.warmup << ", \"layers_timed\": " << timing::Bool(o.layers)
       << ", \"seed\": " << o.seed << ", \"batch\": " << (o.batch > 0 ? std::to_string(o.batch) : "null")
       << ", \"blas_threads\": " << (threads > 0 ? std::to_string(threads) : "null");
  vector<string> docs;
  for (const Model& m : models) docs.push_back(ModelJson(m, o));
  timing::PrintDocument(head.str(), o, docs);
  for (Model& m : models) delete m.net;
  return 0;
}
