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
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/layer.hpp"
#include "caffe/net.hpp"

using caffe::Blob;
using caffe::Net;
using std::string;
using std::vector;

// OpenBLAS's thread control, when the program is linked with OpenBLAS (weak: absent otherwise).
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" int openblas_get_num_threads(void) __attribute__((weak));

namespace {

const char kUsage[] =
    "usage: rebirth-time MODEL.prototxt [MODEL2.prototxt ...] [--weights W ...] [--runs 50]\n"
    "                    [--warmup 5] [--threads N] [--batch B] [--layers] [--seed S] [--cooldown S]\n"
    "Times forward passes of Caffe nets on random input and prints JSON on stdout.\n";

struct Options {
  vector<string> models, weights;
  int runs = 50, warmup = 5, threads = 0, batch = 0;
  unsigned seed = 0;
  double cooldown = 0;
  bool layers = false;
};

[[noreturn]] void Fail(const string& why) {
  std::fprintf(stderr, "rebirth-time: error: %s\n", why.c_str());
  std::exit(2);
}

int ParseInt(const string& flag, const string& text, int lowest) {
  char* end = nullptr;
  long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < lowest || v > 1000000000L)
    Fail(flag + " expects an integer >= " + std::to_string(lowest) + ", not '" + text + "'");
  return static_cast<int>(v);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    string a = argv[i];
    auto value = [&](const string& flag) -> string {
      if (i + 1 >= argc) Fail(flag + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--weights" || a == "-w") {
      o.weights.push_back(value(a));
    } else if (a == "--runs" || a == "-n") {
      o.runs = ParseInt(a, value(a), 1);
    } else if (a == "--warmup") {
      o.warmup = ParseInt(a, value(a), 0);
    } else if (a == "--threads") {
      o.threads = ParseInt(a, value(a), 1);
    } else if (a == "--batch" || a == "-b") {
      o.batch = ParseInt(a, value(a), 1);
    } else if (a == "--seed") {
      o.seed = static_cast<unsigned>(ParseInt(a, value(a), 0));
    } else if (a == "--cooldown") {
      string v = value(a);
      char* end = nullptr;
      o.cooldown = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(o.cooldown >= 0)) Fail("--cooldown expects seconds >= 0, not '" + v + "'");
    } else if (a == "--layers") {
      o.layers = true;
    } else if (a.size() > 1 && a[0] == '-') {
      Fail("unknown option " + a + "\n" + kUsage);
    } else {
      o.models.push_back(a);
    }
  }
  if (o.models.empty()) Fail(string("no MODEL.prototxt given\n") + kUsage);
  if (!o.weights.empty() && o.weights.size() != o.models.size())
    Fail("--weights was given " + std::to_string(o.weights.size()) + " time(s) for " +
         std::to_string(o.models.size()) + " model(s): give it once per model, in order, or not at all");
  for (const string& f : o.models)
    if (!std::ifstream(f).good()) Fail(f + ": cannot read this file");
  for (const string& f : o.weights)
    if (!std::ifstream(f).good()) Fail(f + ": cannot read this file");
  return o;
}

// ---- memory --------------------------------------------------------------------------------

long ProcStatusKb(const char* key) {
  std::ifstream in("/proc/self/status");
  string line;
  size_t n = std::strlen(key);
  while (std::getline(in, line))
    if (line.compare(0, n, key) == 0) return std::atol(line.c_str() + n);
  return -1;
}

long long RssBytes() {
  std::ifstream in("/proc/self/statm");
  long long size = 0, resident = 0;
  if (!(in >> size >> resident)) return -1;
  return resident * sysconf(_SC_PAGESIZE);
}

long long PeakRssBytes() {
  long kb = ProcStatusKb("VmHWM:");
  if (kb >= 0) return kb * 1024LL;
  struct rusage ru;  // no /proc: the process's peak so far (kilobytes on Linux)
  if (getrusage(RUSAGE_SELF, &ru) == 0) return static_cast<long long>(ru.ru_maxrss) * 1024LL;
  return -1;
}

bool ResetPeak() {
  std::ofstream out("/proc/self/clear_refs");
  if (!out) return false;
  out << "5";
  out.flush();
  return static_cast<bool>(out);
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

// ---- JSON ------------------------------------------------------------------------------------

string Quote(const string& s) {
  string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

string Num(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

string NumOrNull(long long v) { return v < 0 ? "null" : std::to_string(v); }

template <typename T, typename F>
string List(const vector<T>& items, F f) {
  string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + f(items[i]);
  return out + "]";
}

double Median(vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// ---- one model -----------------------------------------------------------------------------

struct Model {
  string path, weights;
  Net<float>* net = nullptr;
  long long baseline_rss = -1, peak_rss = -1, rss_after = -1, process_peak = -1, allocated = 0;
  bool peak_reset = false;
  vector<double> forward_ms;
  vector<vector<double>> layers_ms;  // [run][layer]
};

void Open(Model* m, const Options& o, std::mt19937* rng) {
  m->peak_reset = ResetPeak();
  m->baseline_rss = RssBytes();
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
  m->process_peak = PeakRssBytes();
  m->rss_after = RssBytes();
  if (m->peak_reset && m->process_peak >= 0 && m->baseline_rss >= 0)
    m->peak_rss = std::max(0LL, m->process_peak - m->baseline_rss);
  else if (m->rss_after >= 0 && m->baseline_rss >= 0)
    m->peak_rss = std::max(0LL, m->rss_after - m->baseline_rss);
  // Distinct data buffers (shared ones, e.g. Split tops, count once).
  std::set<const void*> seen;
  for (const auto& b : m->net->blobs()) {
    if (b->count() == 0) continue;
    const void* p = b->cpu_data();
    if (seen.insert(p).second) m->allocated += static_cast<long long>(b->count()) * sizeof(float);
  }
  if (!m->weights.empty()) m->net->CopyTrainedLayersFrom(m->weights);
}

void Pause(double seconds) {
  if (seconds > 0) std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
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
  js << "}";
  js << ", \"runs\": " << m.forward_ms.size() << ", \"best_ms\": "
     << Num(*std::min_element(m.forward_ms.begin(), m.forward_ms.end())) << ", \"median_ms\": "
     << Num(Median(m.forward_ms)) << ", \"runs_ms\": " << List(m.forward_ms, Num);
  js << ", \"layers\": [";
  if (!m.layers_ms.empty()) {
    for (size_t j = 0; j < net.layers().size(); ++j) {
      vector<double> col;
      for (const auto& run : m.layers_ms) col.push_back(run[j]);
      js << (j ? ", " : "") << "{\"name\": " << Quote(net.layer_names()[j]) << ", \"type\": " << Quote(types[j])
         << ", \"ms\": " << Num(Median(col)) << ", \"min_ms\": " << Num(*std::min_element(col.begin(), col.end()))
         << "}";
    }
  }
  js << "], \"layers_runs_ms\": " << List(m.layers_ms, [](const vector<double>& r) { return List(r, Num); });
  js << ", \"allocated_bytes\": " << m.allocated << ", \"peak_rss_bytes\": " << NumOrNull(m.peak_rss)
     << ", \"process_peak_rss_bytes\": " << NumOrNull(m.process_peak)
     << ", \"baseline_rss_bytes\": " << NumOrNull(m.baseline_rss) << ", \"rss_after_bytes\": " << NumOrNull(m.rss_after)
     << ", \"peak_reset\": " << (m.peak_reset ? "true" : "false") << ", \"memory_method\": "
     << Quote(m.peak_reset ? "peak RSS growth (VmHWM after a /proc/self/clear_refs reset, minus the RSS before the "
                             "net was created) while creating the net and running 2 forward passes, in rebirth-time"
                           : "RSS growth (/proc/self/statm after creating the net and running 2 forward passes, "
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

  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  for (int r = 0; r < o.warmup + o.runs; ++r) {
    for (size_t k = 0; k < models.size(); ++k) {
      Model& m = models[k];
      Net<float>* net = m.net;
      const int n = static_cast<int>(net->layers().size());
      if ((r > 0 || k > 0)) Pause(o.cooldown);
      auto t0 = Clock::now();
      net->ForwardFromTo(0, n - 1);
      auto t1 = Clock::now();
      vector<double> per_layer;
      if (o.layers) {
        per_layer.resize(n);
        for (int i = 0; i < n; ++i) {
          auto a = Clock::now();
          net->ForwardFromTo(i, i);
          per_layer[i] = ms(a, Clock::now());
        }
      }
      if (r >= o.warmup) {
        m.forward_ms.push_back(ms(t0, t1));
        if (o.layers) m.layers_ms.push_back(per_layer);
      }
    }
  }

  std::ostringstream js;
  js << "{\"program\": \"rebirth-time\", \"format\": 1, \"clock\": \"std::chrono::steady_clock\", \"runs\": "
     << o.runs << ", \"warmup\": " << o.warmup << ", \"layers_timed\": " << (o.layers ? "true" : "false")
     << ", \"seed\": " << o.seed << ", \"batch\": " << (o.batch > 0 ? std::to_string(o.batch) : "null")
     << ", \"blas_threads\": " << (threads > 0 ? std::to_string(threads) : "null")
     << ", \"hardware_threads\": " << std::thread::hardware_concurrency() << ", \"cooldown_s\": " << Num(o.cooldown)
     << ", \"models\": [";
  for (size_t k = 0; k < models.size(); ++k) js << (k ? ", " : "") << ModelJson(models[k], o);
  js << "]}\n";
  std::fputs(js.str().c_str(), stdout);
  std::fflush(stdout);
  for (Model& m : models) delete m.net;
  return 0;
}
