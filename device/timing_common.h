// What the two timing programs share: rebirth-time (rebirth_time.cpp, Caffe) and rebirth-time-ncnn
// (ncnn_time.cpp, ncnn). Both take the same common flags, measure memory and time passes the same
// way and print JSON in the same format; the engine-specific parts stay in each program.
//
//  * command line: timing::Args reads it flag by flag; each program handles its own flags first
//    and hands every other argument to timing::ReadCommon (-h/--help, --runs/-n, --warmup,
//    --threads, --seed, --cooldown, unknown options and the model paths);
//  * memory: timing::Memory resets the kernel's peak-RSS mark (/proc/self/clear_refs) and reads
//    the RSS before a net is created (Start), then VmHWM and the RSS after it ran (Stop);
//  * timing: timing::Rounds interleaves the models run by run (with the cooldown pause between
//    passes), timing::TimeMs times one call with std::chrono::steady_clock;
//  * JSON: Quote, Num, NumOrNull, Bool, List, Median and the fields every document carries.
//
// Header only (inline functions), C++14: each program is one translation unit.
#ifndef REBIRTH_DEVICE_TIMING_COMMON_H_
#define REBIRTH_DEVICE_TIMING_COMMON_H_

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace timing {

// ---- errors and the command line --------------------------------------------------------------

// "PROGRAM: error: WHY" on stderr, exit status 2 (what `rebirth bench` reads as a refusal).
[[noreturn]] inline void Fail(const char* program, const std::string& why) {
  std::fprintf(stderr, "%s: error: %s\n", program, why.c_str());
  std::exit(2);
}

// The flags both programs take; each program's Options adds its own.
struct Options {
  std::vector<std::string> models;
  int runs = 50, warmup = 5, threads = 0;  // threads 0: the engine's default
  unsigned seed = 0;
  double cooldown = 0;  // seconds of pause between two passes
};

// The command line, one argument at a time: while (args.Next()) { if (args.Is("--x")) ... }.
class Args {
 public:
  Args(const char* program, const char* usage, int argc, char** argv)
      : program_(program), usage_(usage), argc_(argc), argv_(argv) {}

  bool Next() {
    if (++i_ >= argc_) return false;
    arg_ = argv_[i_];
    return true;
  }
  const std::string& arg() const { return arg_; }
  const char* program() const { return program_; }
  const char* usage() const { return usage_; }
  bool Is(const char* name, const char* alias = nullptr) const {
    return arg_ == name || (alias != nullptr && arg_ == alias);
  }

  // The value after the current flag.
  std::string Value() {
    if (i_ + 1 >= argc_) Fail(arg_ + " needs a value");
    return argv_[++i_];
  }
  // The value after the current flag as an integer >= lowest.
  int Int(int lowest) {
    const std::string text = Value();
    char* end = nullptr;
    long v = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || v < lowest || v > 1000000000L)
      Fail(arg_ + " expects an integer >= " + std::to_string(lowest) + ", not '" + text + "'");
    return static_cast<int>(v);
  }
  // The value after the current flag as seconds >= 0.
  double Seconds() {
    const std::string text = Value();
    char* end = nullptr;
    double v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0' || !(v >= 0)) Fail(arg_ + " expects seconds >= 0, not '" + text + "'");
    return v;
  }

  [[noreturn]] void Fail(const std::string& why) const { timing::Fail(program_, why); }

 private:
  const char* program_;
  const char* usage_;
  int argc_;
  char** argv_;
  int i_ = 0;
  std::string arg_;
};

// The current argument when it is none of the program's own flags: a shared flag, a model path,
// or an unknown option (which ends the program with the usage).
inline void ReadCommon(Args* args, Options* o) {
  if (args->Is("-h", "--help")) {
    std::fputs(args->usage(), stdout);
    std::exit(0);
  } else if (args->Is("--runs", "-n")) {
    o->runs = args->Int(1);
  } else if (args->Is("--warmup")) {
    o->warmup = args->Int(0);
  } else if (args->Is("--threads")) {
    o->threads = args->Int(1);
  } else if (args->Is("--seed")) {
    o->seed = static_cast<unsigned>(args->Int(0));
  } else if (args->Is("--cooldown")) {
    o->cooldown = args->Seconds();
  } else if (args->arg().size() > 1 && args->arg()[0] == '-') {
    args->Fail("unknown option " + args->arg() + "\n" + args->usage());
  } else {
    o->models.push_back(args->arg());
  }
}

// ---- memory ------------------------------------------------------------------------------------

// The resident set size now (/proc/self/statm), or -1.
inline long long RssBytes() {
  std::ifstream in("/proc/self/statm");
  long long size = 0, resident = 0;
  if (!(in >> size >> resident)) return -1;
  return resident * sysconf(_SC_PAGESIZE);
}

// The peak resident set size (VmHWM in /proc/self/status, else getrusage), or -1.
inline long long PeakRssBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  const char key[] = "VmHWM:";
  const size_t n = std::strlen(key);
  while (std::getline(in, line))
    if (line.compare(0, n, key) == 0) return std::atoll(line.c_str() + n) * 1024LL;
  struct rusage ru;  // no /proc: the process's peak so far (kilobytes on Linux)
  if (getrusage(RUSAGE_SELF, &ru) == 0) return static_cast<long long>(ru.ru_maxrss) * 1024LL;
  return -1;
}

// Resets the kernel's peak-RSS mark to the current RSS; false where that is not allowed.
inline bool ResetPeak() {
  std::ofstream out("/proc/self/clear_refs");
  if (!out) return false;
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

// One net's memory: Start() before creating it, Stop() after its first passes.
struct Memory {
  long long baseline_rss = -1, peak_rss = -1, rss_after = -1, process_peak = -1;
  bool peak_reset = false;

  void Start() {
    peak_reset = ResetPeak();
    baseline_rss = RssBytes();
  }
  void Stop() {
    process_peak = PeakRssBytes();
    rss_after = RssBytes();
    if (peak_reset && process_peak >= 0 && baseline_rss >= 0)
      peak_rss = std::max(0LL, process_peak - baseline_rss);
    else if (rss_after >= 0 && baseline_rss >= 0)
      peak_rss = std::max(0LL, rss_after - baseline_rss);
  }
};

// ---- timing ------------------------------------------------------------------------------------

using Clock = std::chrono::steady_clock;
constexpr const char kClockName[] = "std::chrono::steady_clock";

inline double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// The milliseconds one call of f takes.
template <typename F>
double TimeMs(F f) {
  const Clock::time_point t0 = Clock::now();
  f();
  return Ms(t0, Clock::now());
}

inline void Pause(double seconds) {
  if (seconds > 0) std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

// warmup + runs rounds; in every round pass(k, timed) runs for each of the models in turn (timed:
// the round is past the warm-up), with a pause of cooldown seconds before every pass but the first.
template <typename F>
void Rounds(const Options& o, size_t models, F pass) {
  for (int r = 0; r < o.warmup + o.runs; ++r) {
    for (size_t k = 0; k < models; ++k) {
      if (r > 0 || k > 0) Pause(o.cooldown);
      pass(k, r >= o.warmup);
    }
  }
}

// ---- JSON --------------------------------------------------------------------------------------

inline std::string Quote(const std::string& s) {
  std::string out = "\"";
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

inline std::string Num(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

inline std::string NumOrNull(long long v) { return v < 0 ? "null" : std::to_string(v); }

inline std::string Bool(bool v) { return v ? "true" : "false"; }

template <typename T, typename F>
std::string List(const std::vector<T>& items, F f) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + f(items[i]);
  return out + "]";
}

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// A model's whole-pass times: "runs": N, "best_ms": ..., "median_ms": ..., "runs_ms": [...].
inline std::string TimesJson(const std::vector<double>& ms) {
  return "\"runs\": " + std::to_string(ms.size()) + ", \"best_ms\": " + Num(*std::min_element(ms.begin(), ms.end())) +
         ", \"median_ms\": " + Num(Median(ms)) + ", \"runs_ms\": " + List(ms, Num);
}

// A model's memory: "peak_rss_bytes": ... through "memory_method": ..., the method being
// if_reset when the peak mark could be reset, else if_not.
inline std::string MemoryJson(const Memory& m, const std::string& if_reset, const std::string& if_not) {
  return "\"peak_rss_bytes\": " + NumOrNull(m.peak_rss) + ", \"process_peak_rss_bytes\": " +
         NumOrNull(m.process_peak) + ", \"baseline_rss_bytes\": " + NumOrNull(m.baseline_rss) +
         ", \"rss_after_bytes\": " + NumOrNull(m.rss_after) + ", \"peak_reset\": " + Bool(m.peak_reset) +
         ", \"memory_method\": " + Quote(m.peak_reset ? if_reset : if_not);
}

// Prints the document on stdout: {FIELDS, "hardware_threads": ..., "cooldown_s": ..., "models": [...]}.
inline void PrintDocument(const std::string& fields, const Options& o, const std::vector<std::string>& models) {
  std::string js = "{" + fields + ", \"hardware_threads\": " + std::to_string(std::thread::hardware_concurrency()) +
                   ", \"cooldown_s\": " + Num(o.cooldown) + ", \"models\": [";
  for (size_t k = 0; k < models.size(); ++k) js += (k ? ", " : "") + models[k];
  js += "]}\n";
  std::fputs(js.c_str(), stdout);
  std::fflush(stdout);
}

}  // namespace timing

#endif  // REBIRTH_DEVICE_TIMING_COMMON_H_
