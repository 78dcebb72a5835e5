// rebirth-time-ncnn: time ncnn nets (model.param + model.bin, as `rebirth export --to ncnn`
// writes them) where they will run (this machine, qemu, a phone, a board) and print one JSON
// document on stdout in the shape rebirth-time prints (device/rebirth_time.cpp), so that
// `rebirth bench --engine ncnn --device ...` reads both alike.
//
//   rebirth-time-ncnn MODEL.param [MODEL2.param ...] [--runs 50] [--warmup 5] [--threads N]
//                     [--seed S] [--cooldown SECONDS]
//
// The weights of MODEL.param are MODEL.bin beside it. Method (as engines/ncnn_engine.py and
// bench.py do it with ncnn's Python binding):
//  * ncnn options: float32 throughout (fp16 and bf16 storage/arithmetic off), no Vulkan, light
//    mode, --threads threads (default 1); Winograd, SGEMM and packed layouts as ncnn chooses;
//  * input: every Input layer of the param file gets one fixed random Mat, uniform in [-1, 1)
//    from --seed (ncnn runs one image at a time: batch 1);
//  * memory, before any timing: the peak-RSS mark is reset (/proc/self/clear_refs), the RSS read,
//    the net loaded and two passes run; peak_rss_bytes is VmHWM minus that RSS;
//  * timing: warm-up rounds, then timed rounds; in every round each model in turn makes one whole
//    pass: an Extractor is created, given the inputs and asked for every output of the net. Several
//    models are interleaved run by run. The clock is std::chrono::steady_clock. No per-layer times.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "layer.h"  // ncnn's headers (its CMake config puts include/ncnn on the path)
#include "net.h"
#include "platform.h"

using std::string;
using std::vector;

namespace {

const char kUsage[] =
    "usage: rebirth-time-ncnn MODEL.param [MODEL2.param ...] [--runs 50] [--warmup 5] [--threads N]\n"
    "                         [--seed S] [--cooldown S]\n"
    "Times forward passes of ncnn nets (MODEL.param with MODEL.bin beside it) on random input and\n"
    "prints JSON on stdout.\n";

struct Options {
  vector<string> models;
  int runs = 50, warmup = 5, threads = 1;
  unsigned seed = 0;
  double cooldown = 0;
};

[[noreturn]] void Fail(const string& why) {
  std::fprintf(stderr, "rebirth-time-ncnn: error: %s\n", why.c_str());
  std::exit(2);
}

int ParseInt(const string& flag, const string& text, int lowest) {
  char* end = nullptr;
  long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v < lowest || v > 1000000000L)
    Fail(flag + " expects an integer >= " + std::to_string(lowest) + ", not '" + text + "'");
  return static_cast<int>(v);
}

string BinOf(const string& param) {
  const string ext = ".param";
  if (param.size() > ext.size() && param.compare(param.size() - ext.size(), ext.size(), ext) == 0)
    return param.substr(0, param.size() - ext.size()) + ".bin";
  return param + ".bin";
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
    } else if (a == "--runs" || a == "-n") {
      o.runs = ParseInt(a, value(a), 1);
    } else if (a == "--warmup") {
      o.warmup = ParseInt(a, value(a), 0);
    } else if (a == "--threads") {
      o.threads = ParseInt(a, value(a), 1);
    } else if (a == "--seed") {
      o.seed = static_cast<unsigned>(ParseInt(a, value(a), 0));
    } else if (a == "--cooldown") {
      string v = value(a);
      char* end = nullptr;
      o.cooldown = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(o.cooldown >= 0)) Fail("--cooldown expects seconds >= 0, not '" + v + "'");
    } else if (a == "--layers") {
      Fail("--layers: ncnn gives no per-layer times here (whole passes only)");
    } else if (a.size() > 1 && a[0] == '-') {
      Fail("unknown option " + a + "\n" + kUsage);
    } else {
      o.models.push_back(a);
    }
  }
  if (o.models.empty()) Fail(string("no MODEL.param given\n") + kUsage);
  for (const string& f : o.models) {
    if (!std::ifstream(f).good()) Fail(f + ": cannot read this file");
    if (!std::ifstream(BinOf(f)).good()) Fail(BinOf(f) + ": cannot read this file (the weights of " + f + ")");
  }
  return o;
}

// ---- memory (as rebirth-time measures it) ---------------------------------------------------

long long RssBytes() {
  std::ifstream in("/proc/self/statm");
  long long size = 0, resident = 0;
  if (!(in >> size >> resident)) return -1;
  return resident * sysconf(_SC_PAGESIZE);
}

long long PeakRssBytes() {
  std::ifstream in("/proc/self/status");
  string line;
  while (std::getline(in, line))
    if (line.compare(0, 6, "VmHWM:") == 0) return std::atoll(line.c_str() + 6) * 1024LL;
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

// ---- the param file's inputs ------------------------------------------------------------------

struct InputSpec {
  string blob;
  int w = 0, h = 0, c = 0;
};

// The Input layers of an ncnn param file ("Input NAME 0 1 BLOB 0=w 1=h 2=c"): their blob and shape.
vector<InputSpec> ReadInputs(const string& path) {
  std::ifstream in(path);
  string line;
  vector<InputSpec> out;
  int n = 0;
  while (std::getline(in, line)) {
    if (++n <= 2) continue;  // the magic number, then the layer and blob counts
    std::istringstream ls(line);
    string type, name, blob;
    int bottoms = 0, tops = 0;
    if (!(ls >> type >> name >> bottoms >> tops) || type != "Input" || bottoms != 0 || tops != 1) continue;
    InputSpec spec;
    ls >> spec.blob;
    string kv;
    while (ls >> kv) {
      size_t eq = kv.find('=');
      if (eq == string::npos) continue;
      int key = std::atoi(kv.substr(0, eq).c_str()), v = std::atoi(kv.c_str() + eq + 1);
      if (key == 0) spec.w = v;
      else if (key == 1) spec.h = v;
      else if (key == 2) spec.c = v;
    }
    if (spec.w <= 0) Fail(path + ": Input layer '" + name + "' has no shape (0=w [1=h 2=c])");
    out.push_back(spec);
  }
  if (out.empty()) Fail(path + ": no Input layer");
  return out;
}

ncnn::Mat RandomMat(const InputSpec& s, std::mt19937* rng) {
  ncnn::Mat m;
  if (s.c > 0) m.create(s.w, s.h, s.c);
  else if (s.h > 0) m.create(s.w, s.h);
  else m.create(s.w);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int q = 0; q < std::max(1, m.c); ++q) {
    float* p = m.channel(q);
    for (int i = 0; i < m.w * m.h * m.d; ++i) p[i] = u(*rng);
  }
  return m;
}

// ---- JSON ------------------------------------------------------------------------------------

string Quote(const string& s) {
  string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
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
  string path;
  ncnn::Net* net = nullptr;
  vector<InputSpec> inputs;
  vector<ncnn::Mat> mats;
  vector<string> outputs;
  long long baseline_rss = -1, peak_rss = -1, rss_after = -1, process_peak = -1;
  bool peak_reset = false;
  vector<double> forward_ms;
};

// One whole pass: a fresh extractor, every input, every output.
void Forward(const Model& m) {
  ncnn::Extractor ex = m.net->create_extractor();
  for (size_t i = 0; i < m.inputs.size(); ++i)
    if (ex.input(m.inputs[i].blob.c_str(), m.mats[i]) != 0) Fail(m.path + ": no input blob '" + m.inputs[i].blob + "'");
  for (const string& name : m.outputs) {
    ncnn::Mat out;
    int ret = ex.extract(name.c_str(), out);
    if (ret != 0) Fail(m.path + ": ncnn could not compute blob '" + name + "' (error " + std::to_string(ret) + ")");
  }
}

void Open(Model* m, const Options& o, std::mt19937* rng) {
  m->inputs = ReadInputs(m->path);
  m->peak_reset = ResetPeak();
  m->baseline_rss = RssBytes();
  m->net = new ncnn::Net();
  ncnn::Option& opt = m->net->opt;
  opt.num_threads = o.threads;
  opt.lightmode = true;
  opt.use_vulkan_compute = false;
  opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = false;
  opt.use_bf16_storage = false;
  if (m->net->load_param(m->path.c_str()) != 0) Fail(m->path + ": ncnn could not load this param file");
  if (m->net->load_model(BinOf(m->path).c_str()) != 0) Fail(BinOf(m->path) + ": ncnn could not load these weights");
  for (const char* name : m->net->output_names()) m->outputs.push_back(name);
  for (const InputSpec& s : m->inputs) m->mats.push_back(RandomMat(s, rng));
  Forward(*m);
  Forward(*m);
  m->process_peak = PeakRssBytes();
  m->rss_after = RssBytes();
  if (m->peak_reset && m->process_peak >= 0 && m->baseline_rss >= 0)
    m->peak_rss = std::max(0LL, m->process_peak - m->baseline_rss);
  else if (m->rss_after >= 0 && m->baseline_rss >= 0)
    m->peak_rss = std::max(0LL, m->rss_after - m->baseline_rss);
}

string ModelJson(const Model& m) {
  vector<string> names, types;
  for (const ncnn::Layer* l : m.net->layers()) {
    names.push_back(l->name);
    types.push_back(l->type);
  }
  std::ostringstream js;
  js << "{\"model\": " << Quote(m.path) << ", \"weights\": " << Quote(BinOf(m.path))
     << ", \"layer_names\": " << List(names, Quote) << ", \"layer_types\": " << List(types, Quote)
     << ", \"inputs\": " << List(m.inputs, [](const InputSpec& s) { return Quote(s.blob); })
     << ", \"outputs\": " << List(m.outputs, Quote) << ", \"blob_shapes\": {";
  for (size_t i = 0; i < m.inputs.size(); ++i) {
    const InputSpec& s = m.inputs[i];
    vector<int> shape = {1};  // batch 1, then Caffe's order: c, h, w as far as given
    if (s.c > 0) shape.push_back(s.c);
    if (s.h > 0) shape.push_back(s.h);
    shape.push_back(s.w);
    js << (i ? ", " : "") << Quote(s.blob) << ": " << List(shape, [](int d) { return std::to_string(d); });
  }
  js << "}, \"runs\": " << m.forward_ms.size() << ", \"best_ms\": "
     << Num(*std::min_element(m.forward_ms.begin(), m.forward_ms.end())) << ", \"median_ms\": "
     << Num(Median(m.forward_ms)) << ", \"runs_ms\": " << List(m.forward_ms, Num)
     << ", \"layers\": [], \"layers_runs_ms\": [], \"allocated_bytes\": null"
     << ", \"peak_rss_bytes\": " << NumOrNull(m.peak_rss) << ", \"process_peak_rss_bytes\": " << NumOrNull(m.process_peak)
     << ", \"baseline_rss_bytes\": " << NumOrNull(m.baseline_rss) << ", \"rss_after_bytes\": " << NumOrNull(m.rss_after)
     << ", \"peak_reset\": " << (m.peak_reset ? "true" : "false") << ", \"memory_method\": "
     << Quote(m.peak_reset ? "peak RSS growth (VmHWM after a /proc/self/clear_refs reset, minus the RSS before the "
                             "net was loaded) while loading the net and running 2 passes, in rebirth-time-ncnn"
                           : "RSS growth (/proc/self/statm after loading the net and running 2 passes, minus "
                             "before), in rebirth-time-ncnn; the peak mark could not be reset here")
     << "}";
  return js.str();
}

}  // namespace

int main(int argc, char** argv) {
  Options o = ParseArgs(argc, argv);
  std::mt19937 rng(o.seed);
  vector<Model> models(o.models.size());
  for (size_t k = 0; k < models.size(); ++k) {
    models[k].path = o.models[k];
    Open(&models[k], o, &rng);
  }

  using Clock = std::chrono::steady_clock;
  for (int r = 0; r < o.warmup + o.runs; ++r) {
    for (size_t k = 0; k < models.size(); ++k) {
      if ((r > 0 || k > 0) && o.cooldown > 0)
        std::this_thread::sleep_for(std::chrono::duration<double>(o.cooldown));
      auto t0 = Clock::now();
      Forward(models[k]);
      auto t1 = Clock::now();
      if (r >= o.warmup) models[k].forward_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
  }

  std::ostringstream js;
  js << "{\"program\": \"rebirth-time-ncnn\", \"format\": 1, \"engine\": \"ncnn\", \"ncnn_version\": "
     << Quote(NCNN_VERSION_STRING) << ", \"clock\": \"std::chrono::steady_clock\", \"runs\": " << o.runs
     << ", \"warmup\": " << o.warmup << ", \"layers_timed\": false, \"seed\": " << o.seed << ", \"batch\": 1"
     << ", \"threads\": " << o.threads << ", \"blas_threads\": null"
     << ", \"hardware_threads\": " << std::thread::hardware_concurrency() << ", \"cooldown_s\": " << Num(o.cooldown)
     << ", \"models\": [";
  for (size_t k = 0; k < models.size(); ++k) js << (k ? ", " : "") << ModelJson(models[k]);
  js << "]}\n";
  std::fputs(js.str().c_str(), stdout);
  std::fflush(stdout);
  for (Model& m : models) delete m.net;
  return 0;
}
