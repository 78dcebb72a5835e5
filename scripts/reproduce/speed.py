"""The paper's Table 2 (share of forward time in non-tensor layers) and Tables 4-6 (GoogLeNet,
-Tucker, -Slim, -Slim-Tucker and SqueezeNet: latency and memory side by side) on this machine,
per engine, by `rebirth bench --json`.

    .venv/bin/python scripts/reproduce/speed.py [--runs 20] [--engines caffe,onnxruntime,ncnn,mnn] [--work WORK]

About 1.5 minutes at --runs 20 on 2 shared cores (2 minutes the first time, when GoogLeNet's
variants are made). Writes docs/results/speed.md and speed.json: the machine,
the exact commands and:

* Table 2: `rebirth bench googlenet alexnet resnet50 --layers`: the non-tensor share of the
  layers' time (the paper's Eq. 1 over per-layer medians; in brackets the interquartile range of
  the share within one run) beside the paper's x86 and Arm figures, and the same share measured by
  whole passes only (deeprebirth.runtime.kind_share: nets of the tensor layers alone and of the
  non-tensor layers alone, timed side by side with the model), a check of the per-layer figures;
* Tables 4-6, one `rebirth bench` of the six nets per engine (Caffe with --layers for Table 4's
  per-block times; onnxruntime, ncnn and MNN time whole passes of each net exported): best and
  median ms, speed-ups against GoogLeNet, and per net its parameters, GMACs and layers (`rebirth
  inspect -b 1`), weight MB (float32), blob MB and peak resident memory (Caffe's run);
* what one layer is worth in MACs here (`rebirth bench --fit-layer-cost` of the shipped
  Fashion-MNIST Slim and Slim-Tucker nets: the default of `rebirth tucker --layer-cost`).

The nets: GoogLeNet with random weights (seed 0, realistic statistics: the product's
random_weights) written to WORK/googlenet_random.caffemodel, then `rebirth slim`, `rebirth tucker
--ratio 0.5` (the paper halves the weights; VBMF finds no rank in random weights) and `rebirth slim
--tucker --ratio 0.5` of it into WORK (default out/speed, git-ignored; each made once).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steps import RESULTS, ROOT, Step, machine, machine_line, md_cell, rebirth, run_chain, shown, write_json

MADE_BY = "scripts/reproduce/speed.py"
MB = 1024 * 1024
ENGINES = ("caffe", "onnxruntime", "ncnn", "mnn")
TABLE2_NETS = ("googlenet", "alexnet", "resnet50")
PAPER_TABLE2 = {"alexnet": (32.08, 25.08), "googlenet": (62.03, 37.81), "resnet50": (55.66, 36.61)}  # x86, Arm
NETS = ("GoogLeNet", "GoogLeNet-Tucker", "GoogLeNet-Slim", "GoogLeNet-Slim-Tucker", "SqueezeNet v1.0",
        "SqueezeNet v1.1")
TARGET_SPEEDUP = 6.0      # the issue's: Slim-Tucker at least 6x faster than GoogLeNet (paper: 6.05x on x86)
FMNIST_NETS = ("models/fmnist_googlenet_slim", "models/fmnist_googlenet_slim_tucker")


def net_specs(work: Path) -> list[str]:
    """The six nets of Tables 4-6 as `rebirth bench` takes them, in the order of ``NETS``."""
    return ["googlenet", str(work / "googlenet_tucker"), str(work / "googlenet_slim"),
            str(work / "googlenet_slim_tucker"), "squeezenet", "squeezenet11"]


def build_steps(work: Path, ratio: float) -> list[Step]:
    """The rebirth commands that make GoogLeNet's variants from its random weights."""
    deploy, w = str(ROOT / "models" / "googlenet.prototxt"), str(work / "googlenet_random.caffemodel")
    return [
        Step("GoogLeNet-Slim", ["slim", deploy, "-w", w, "-o", str(work / "googlenet_slim")],
             work / "googlenet_slim" / "report.json"),
        Step("GoogLeNet-Tucker", ["tucker", deploy, w, "--ratio", f"{ratio:g}", "-o", str(work / "googlenet_tucker")],
             work / "googlenet_tucker" / "report.json"),
        Step("GoogLeNet-Slim-Tucker", ["slim", deploy, "-w", w, "--tucker", "--ratio", f"{ratio:g}", "-o",
                                       str(work / "googlenet_slim_tucker")],
             work / "googlenet_slim_tucker" / "report.json"),
    ]


def random_googlenet(path: Path) -> None:
    """GoogLeNet's random weights (seed 0) as a .caffemodel, written once."""
    if path.exists():
        return
    from deeprebirth.caffe import netio  # noqa: PLC0415
    from deeprebirth.graph.dag import Graph  # noqa: PLC0415
    from deeprebirth.runtime.pycaffe import random_weights  # noqa: PLC0415

    net = netio.read_net(ROOT / "models" / "googlenet.prototxt")
    path.parent.mkdir(parents=True, exist_ok=True)
    netio.write_weights(netio.with_weights(net, random_weights(Graph(net, strict=False), seed=0)), path)


# ----------------------------------------------------------------------------------------------
# pure: the rows and tables from the JSON documents


def latency_rows(doc: dict) -> list[dict]:
    """One row per net of a `bench --json` document: best and median ms, speed-ups against the
    first net (best / best, median / median, median of run-by-run ratios), blob and peak RSS
    bytes (None where the engine does not measure them)."""
    rows = []
    for m in doc["models"]:
        r = doc["ratios"]["models"][m["model"]]
        rows.append({"best_ms": m["best_ms"], "median_ms": m["median_ms"],
                     "speedup_best": 1 / r["best"] if r.get("best") else None,
                     "speedup_median": 1 / r["median"] if r.get("median") else None,
                     "speedup_paired": 1 / r["paired_median"] if r.get("paired_median") else None,
                     "blob_bytes": m.get("memory_bytes"), "peak_rss_bytes": m.get("peak_rss_bytes")})
    return rows


def static_row(inspect_doc: dict) -> dict:
    """Parameters, MACs and layers of a net (`rebirth inspect -b 1 --json`), its weights in MB as
    float32."""
    t = inspect_doc["totals"]
    return {"params": t["params"], "macs": t["macs"], "layers": t["layers"], "weight_bytes": 4 * t["params"]}


def targets(rows: dict[str, dict], static: dict[str, dict]) -> dict:
    """The issue's speed targets from one engine's rows (by net name); None where a net is missing."""
    st, sq = rows.get("GoogLeNet-Slim-Tucker") or {}, rows.get("SqueezeNet v1.0") or {}

    def over(a, b, key):
        return a[key] / b[key] if a.get(key) and b.get(key) else None
    slim_p, st_p = (static.get(n, {}).get("params") for n in ("GoogLeNet-Slim", "GoogLeNet-Slim-Tucker"))
    return {"slim_tucker_speedup_best": st.get("speedup_best"), "slim_tucker_speedup_median": st.get("speedup_median"),
            "speedup_target": TARGET_SPEEDUP, "squeezenet_over_slim_tucker_best": over(sq, st, "best_ms"),
            "squeezenet_over_slim_tucker_median": over(sq, st, "median_ms"),
            "slim_tucker_weights_over_slim": st_p / slim_p if st_p and slim_p else None}


def x(v, digits: int = 2) -> str:
    return f"{v:.{digits}f}x" if v is not None else "-"


def table2_md(doc: dict, check: dict | None = None) -> list[str]:
    """Table 2's rows: the paper's shares, `bench --layers`' and, with ``check`` (network ->
    kind_share.measure), the whole-pass methods B and C."""
    def pc(v: dict) -> str:
        return f"{v['percent']:.1f} % ({v['iqr'][0]:.0f}-{v['iqr'][1]:.0f})"
    lines = ["| network | paper, x86 CPU | paper, Arm | here: non-tensor share, per layer (IQR of runs) | "
             "B: 1 - tensor-only / full | C: non-tensor-only / full | whole pass, median ms | layer sum vs whole "
             "pass |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in zip(TABLE2_NETS, doc["models"]):
        paper = PAPER_TABLE2.get(name)
        iqr = m.get("non_tensor_percent_iqr")
        spread = f" ({iqr[0]:.0f}-{iqr[1]:.0f})" if iqr else ""
        agree = m.get("layer_sum") or {}
        diff = f"{agree['diff_percent']:+.1f} %" if agree else "-"
        c = (check or {}).get(name)
        b_c = f"{pc(c['B'])} | {pc(c['C'])}" if c else "- | -"
        lines.append(f"| {name} | {paper[0]:.1f} % | {paper[1]:.1f} % | {m['non_tensor_percent']:.1f} %{spread} | "
                     f"{b_c} | {m['median_ms']:.1f} | {diff} |")
    return lines


def table2_check(runs: int, warmup: int) -> dict:
    """Methods B and C of each Table 2 network at batch 1, random weights (in this process, pycaffe)."""
    from deeprebirth.runtime import bench, kind_share  # noqa: PLC0415

    out = {}
    for name in TABLE2_NETS:
        print(f"+ kind_share.measure({name}, runs={runs}, warmup={warmup})", file=sys.stderr, flush=True)
        out[name] = kind_share.measure(bench.prepare([name], batch=1)[0].model, runs=runs, warmup=warmup)
    return out


def engines_md(blocks: list[tuple[str, list[dict] | str]], static: dict[str, dict],
               caffe: list[dict] | None) -> list[str]:
    """Tables 5 and 6: a row per net, one column block per engine (best ms, median ms, speed-up
    best / median; a refusal as a note), then the net's own figures and Caffe's memory."""
    head = ["model"]
    for title, _ in blocks:
        head += [f"{title}: best ms", f"{title}: median ms", f"{title}: speed-up (best / median)"]
    head += ["params", "GMACs", "layers", "weights MB", "blob MB (Caffe)", "peak RSS MB (Caffe)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for i, net in enumerate(NETS):
        cells = [net]
        for _, rows in blocks:
            if isinstance(rows, str):
                cells += [md_cell(f"not run: {rows}"), "-", "-"]
                continue
            r = rows[i]
            cells += [f"{r['best_ms']:.1f}", f"{r['median_ms']:.1f}",
                      "1.00x" if i == 0 else f"{x(r['speedup_best'])} / {x(r['speedup_median'])}"]
        s = static[net]
        c = caffe[i] if caffe else {}
        blob = f"{c['blob_bytes'] / MB:.1f}" if c.get("blob_bytes") else "-"
        rss = f"{c['peak_rss_bytes'] / MB:.1f}" if c.get("peak_rss_bytes") else "-"
        cells += [f"{s['params'] / 1e6:.2f} M", f"{s['macs'] / 1e9:.2f}", str(s["layers"]),
                  f"{s['weight_bytes'] / MB:.2f}", blob, rss]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def blocks_md(caffe_doc: dict) -> list[str]:
    """Table 4: each GoogLeNet variant's time per block (ms; the sum of its layers' median times,
    a pooling counted with the block before it: `rebirth bench --plot`'s grouping)."""
    from deeprebirth.runtime.plot import blocks  # noqa: PLC0415

    per = {name: {b["block"]: b["tensor_ms"] + b["non_tensor_ms"] for b in blocks(m["layers"])}
           for name, m in zip(NETS[:4], caffe_doc["models"][:4])}
    order = list(dict.fromkeys(k for name in NETS[:4] for k in per[name]))
    lines = ["| block | " + " | ".join(NETS[:4]) + " |", "|---|" + "---:|" * 4]
    for k in order:
        lines.append(f"| {k} | " + " | ".join(f"{per[n][k]:.2f}" if k in per[n] else "-" for n in NETS[:4]) + " |")
    lines.append("| total | " + " | ".join(f"{sum(per[n].values()):.2f}" for n in NETS[:4]) + " |")
    return lines


def targets_line(title: str, t: dict) -> str:
    return (f"{title}: Slim-Tucker {x(t['slim_tucker_speedup_best'])} (best) / {x(t['slim_tucker_speedup_median'])} "
            f"(median) faster than GoogLeNet (target {TARGET_SPEEDUP:g}x; the paper: 6.05x on x86); SqueezeNet v1.0 "
            f"takes {x(t['squeezenet_over_slim_tucker_best'])} (best) / {x(t['squeezenet_over_slim_tucker_median'])} "
            "(median) Slim-Tucker's time.")


def engine_title(engine: str, threads: int) -> str:
    return "Caffe" if engine == "caffe" else f"{engine}, {threads} thread{'s' if threads > 1 else ''}"


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "speed",
                    help="where GoogLeNet's variants are made (default: out/speed, git-ignored)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where speed.md and speed.json go")
    ap.add_argument("--runs", type=int, default=20, help="timed runs of every bench (interleaved)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated, of: " + ", ".join(ENGINES))
    ap.add_argument("--threads", type=int, default=1, help="threads of every engine but Caffe (its BLAS's own)")
    ap.add_argument("--ratio", type=float, default=0.5, help="Tucker: the fraction of each layer's weights kept")
    args = ap.parse_args(argv)
    engines = [e.strip().lower() for e in args.engines.split(",") if e.strip()]
    for e in engines:
        if e not in ENGINES:
            raise SystemExit(f"--engines: unknown engine '{e}' (of: {', '.join(ENGINES)})")
    work = args.work.resolve()
    script_cmd = shown([MADE_BY, *(argv if argv is not None else sys.argv[1:])], work, "python")
    mach = machine()
    random_googlenet(work / "googlenet_random.caffemodel")
    built = run_chain(lambda: build_steps(work, args.ratio), work / "speed_steps.json", MADE_BY, work=work)
    timing = ["--runs", str(args.runs), "--warmup", str(args.warmup)]
    commands = {}

    def bench(key: str, cmd: list[str]) -> dict | str:
        commands[key] = shown(cmd + ["--json"], work)
        try:
            return rebirth(cmd, work=work)
        except SystemExit as exc:       # an engine that cannot run here (not installed, a net refused)
            return str(exc)

    static = {net: static_row(rebirth(["inspect", spec, "-b", "1"], work=work))
              for net, spec in zip(NETS, net_specs(work))}
    commands["inspect"] = shown(["inspect", "MODEL", "-b", "1", "--json"], work)
    t2 = bench("table2", ["bench", *TABLE2_NETS, "--layers", *timing])
    check = table2_check(args.runs, args.warmup)
    docs: dict[str, dict | str] = {}
    for e in engines:
        extra = ["--layers"] if e == "caffe" else ["--engine", e, "--threads", str(args.threads)]
        docs[e] = bench(e, ["bench", *net_specs(work), *extra, *timing])
    cost = bench("layer_cost", ["bench", *(str(ROOT / m) for m in FMNIST_NETS), "--fit-layer-cost", *timing])

    rows = {e: latency_rows(d) if isinstance(d, dict) else d for e, d in docs.items()}
    caffe = rows.get("caffe") if isinstance(rows.get("caffe"), list) else None
    tg = {e: targets(dict(zip(NETS, r)), static) for e, r in rows.items() if isinstance(r, list)}
    out = {"made_by": MADE_BY, "command": script_cmd, "machine": mach, "runs": args.runs, "warmup": args.warmup,
           "threads": args.threads, "tucker_ratio": args.ratio, "commands": commands,
           "built": {k: v["command"] for k, v in built["steps"].items()},
           "table2": [{"model": n, "non_tensor_percent": m["non_tensor_percent"],
                       "non_tensor_percent_iqr": m.get("non_tensor_percent_iqr"), "median_ms": m["median_ms"],
                       "paper_x86": PAPER_TABLE2[n][0], "paper_arm": PAPER_TABLE2[n][1]}
                      for n, m in zip(TABLE2_NETS, t2["models"])] if isinstance(t2, dict) else t2,
           "table2_whole_passes": check,
           "static": static,
           "engines": {e: {"title": engine_title(e, args.threads), "models": dict(zip(NETS, r)) if isinstance(r, list)
                           else None, "error": r if isinstance(r, str) else None,
                           "device": docs[e].get("device_description") if isinstance(docs[e], dict) else None,
                           "targets": tg.get(e)} for e, r in rows.items()},
           "layer_cost": cost.get("layer_cost") if isinstance(cost, dict) else cost}
    args.results.mkdir(parents=True, exist_ok=True)
    write_json(args.results / "speed.json", out)
    md = markdown(out, t2, docs, rows, static, caffe)
    tmp = args.results / ".speed.md.tmp"
    tmp.write_text(md)
    tmp.replace(args.results / "speed.md")
    print(md)
    return 0


def markdown(out: dict, t2, docs: dict, rows: dict, static: dict, caffe) -> str:
    c = out["commands"]
    lines = ["# Speed: the paper's Tables 2 and 4-6 (generated)", "",
             f"Written by `{out['command']}`; do not edit: rerun it. Batch 1, random input, {out['runs']} "
             f"interleaved timed runs (+{out['warmup']} warm-up) per net in every bench; absolute times on a shared "
             "machine are noisy, the ratios within one bench are what counts.", "", machine_line(out["machine"]), "",
             "## Table 2: share of forward time in non-tensor layers", ""]
    lines += table2_md(t2, out["table2_whole_passes"]) if isinstance(t2, dict) else [f"Not measured: {t2}"]
    lines += ["", "The per-layer share is the paper's Eq. 1 over the per-layer medians (`rebirth bench --layers`). B "
              "and C check it by whole passes only: the model's tensor layers alone, and its non-tensor layers "
              "alone, each fed the activations it reads in the model, timed side by side with the model "
              "(`deeprebirth.runtime.kind_share.measure`, same runs; median over rounds, interquartile range in "
              "brackets; colder caches bias B low and C high). The last column is how far the sum of the per-layer "
              "calls is from a whole forward pass (median over runs).", "",
              "## Tables 4-6: GoogLeNet, -Tucker, -Slim, -Slim-Tucker and SqueezeNet, per engine", "",
              f"GoogLeNet's weights are random (seed 0); Tucker keeps {out['tucker_ratio']:g} of each layer's weights "
              f"(`--ratio`). Engines other than Caffe run each net exported by `rebirth export`, "
              f"{out['threads']} thread(s); Caffe uses its BLAS's threads.", ""]
    blocks = [(out["engines"][e]["title"], r) for e, r in rows.items()]
    lines += engines_md(blocks, static, caffe)
    lines.append("")
    for info in out["engines"].values():
        if info["targets"]:
            lines.append("* " + targets_line(info["title"], info["targets"]))
    if caffe:
        w = out["engines"]["caffe"]["targets"]["slim_tucker_weights_over_slim"]
        lines.append(f"* Slim-Tucker has {w:.2f} of Slim's weights (the paper: 11.99 vs 23.77 MB, 0.50).")
    if isinstance(docs.get("caffe"), dict):
        lines += ["", "Table 4: time per block in Caffe (ms, the sum of the block's layers' median times; a pooling "
                  "counted with the block before it):", ""]
        lines += blocks_md(docs["caffe"])
    lines += ["", "## One layer's cost in MACs here", ""]
    lc = out["layer_cost"]
    if isinstance(lc, dict):
        from deeprebirth.graph.dag import LAYER_COST_MACS  # noqa: PLC0415

        cost = f"{lc['layer_cost_macs']:,} MACs" if lc["layer_cost_macs"] is not None else "no positive cost"
        lines.append(f"time = {lc['us_per_layer']:.2f} µs a layer + {lc['ns_per_mac']:.4f} ns a MAC over the "
                     f"{lc['layers']} Convolution/InnerProduct layers of the shipped Fashion-MNIST Slim and "
                     f"Slim-Tucker nets (fastest runs; rms {lc['rms_us']:.2f} µs): one layer is worth {cost} "
                     "(`rebirth tucker --layer-cost`; its default, `graph.dag.LAYER_COST_MACS`, is "
                     f"{LAYER_COST_MACS:,}).")
    else:
        lines.append(f"Not measured: {lc}")
    lines += ["", "## The commands", "", "From the repository's root, in the project's virtualenv (`make install`); "
              "`$WORK` is the script's work folder, where it first writes GoogLeNet's random weights "
              "(`googlenet_random.caffemodel`, the product's `random_weights`, seed 0):", "", "```sh"]
    lines += list(out["built"].values())
    lines += [c["inspect"] + "      # each of the six nets", c["table2"],
              f"# B and C: deeprebirth.runtime.kind_share.measure(bench.prepare([NET], batch=1)[0].model, "
              f"runs={out['runs']}, warmup={out['warmup']}) for each NET of Table 2"]
    lines += [c[e] for e in docs] + [c["layer_cost"], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
