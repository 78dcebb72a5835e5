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
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "layer.h"  // ncnn's headers (its CMake config puts include/ncnn on the path)
#include "net.h"
#include "platform.h"
#include "timing_common.h"  // beside this file: the command line, memory, clock and JSON helpers

using std::string;
using std::vector;
using timing::List;
using timing::Num;
using timing::Quote;

namespace {

const char kUsage[] =
    "usage: rebirth-time-ncnn MODEL.param [MODEL2.param ...] [--runs 50] [--warmup 5] [--threads N]\n"
    "                         [--seed S] [--cooldown S]\n"
    "Times forward passes of ncnn nets (MODEL.param with MODEL.bin beside it) on random input and\n"
    "prints JSON on stdout.\n";

const char kProgram[] = "rebirth-time-ncnn";

struct Options : timing::Options {
  Options() { threads = 1; }  // ncnn: one thread unless --threads says
};

[[noreturn]] void Fail(const string& why) { timing::Fail(kProgram, why); }

string BinOf(const string& param) {
  const string ext = ".param";
  if (param.size() > ext.size() && param.compare(param.size() - ext.size(), ext.size(), ext) == 0)
    return param.substr(0, param.size() - ext.size()) + ".bin";
  return param + ".bin";
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  timing::Args args(kProgram, kUsage, argc, argv);
  while (args.Next()) {
    if (args.Is("--layers")) args.Fail("--layers: ncnn gives no per-layer times here (whole passes only)");
    timing::ReadCommon(&args, &o);
  }
  if (o.models.empty()) Fail(string("no MODEL.param given\n") + kUsage);
  for (const string& f : o.models) {
    if (!std::ifstream(f).good()) Fail(f + ": cannot read this file");
    if (!std::ifstream(BinOf(f)).good()) Fail(BinOf(f) + ": cannot read this file (the weights of " + f + ")");
  }
  return o;
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

// ---- one model -----------------------------------------------------------------------------

struct Model {
  string path;
  ncnn::Net* net = nullptr;
  vector<InputSpec> inputs;
  vector<ncnn::Mat> mats;
  vector<string> outputs;
  timing::Memory memory;
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
  m->memory.Start();
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
  m->memory.Stop();
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
  js << "}, " << timing::TimesJson(m.forward_ms)
     << ", \"layers\": [], \"layers_runs_ms\": [], \"allocated_bytes\": null, "
     << timing::MemoryJson(m.memory,
                           "peak RSS growth (VmHWM after a /proc/self/clear_refs reset, minus the RSS before the "
                           "net was loaded) while loading the net and running 2 passes, in rebirth-time-ncnn",
                           "RSS growth (/proc/self/statm after loading the net and running 2 passes, minus "
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

  timing::Rounds(o, models.size(), [&](size_t k, bool timed) {
    const double ms = timing::TimeMs([&] { Forward(models[k]); });
    if (timed) models[k].forward_ms.push_back(ms);
  });

  std::ostringstream head;
  head << "\"program\": \"rebirth-time-ncnn\", \"format\": 1, \"engine\": \"ncnn\", \"ncnn_version\": "
       << Quote(NCNN_VERSION_STRING) << ", \"clock\": " << Quote(timing::kClockName) << ", \"runs\": " << o.runs
       << ", \"warmup\": " << o.warmup << ", \"layers_timed\": false, \"seed\": " << o.seed << ", \"batch\": 1"
       << ", \"threads\": " << o.threads << ", \"blas_threads\": null";
  vector<string> docs;
  for (const Model& m : models) docs.push_back(ModelJson(m));
  timing::PrintDocument(head.str(), o, docs);
  for (Model& m : models) delete m.net;
  return 0;
}
