"""`rebirth bench`: latency (best and median run), per-layer time and memory of one or more nets."""
from __future__ import annotations

from pathlib import Path

import click

from deeprebirth.caffe import folders
from deeprebirth.cli import echo, main, output_json, reports, show_warnings
from deeprebirth.cli.progress import progress_bar
from deeprebirth.errors import RebirthError
from deeprebirth.runtime import bench, engines, layer_cost, target
from deeprebirth.runtime import plot as plot_mod


@main.command("bench")
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL ...]")
@click.option("--weights", "-w", multiple=True, type=str,
              help="A .caffemodel; give it once per MODEL, in order (default: random weights).")
@click.option("--device", "-d", default="cpu", show_default=True,
              help="Where to run: cpu (pycaffe here), host (rebirth-time here), adb[:SERIAL] (an Android phone), "
                   "ssh://[user@]host (a Linux board), qemu-aarch64 (the ARM build emulated here).")
@click.option("--engine", "-e", default="caffe", show_default=True,
              type=click.Choice(sorted(engines.ENGINES), case_sensitive=False),
              help="What runs the nets: caffe (pycaffe, or rebirth-time on other devices), or each MODEL exported "
                   "(rebirth export) and run by onnxruntime, ncnn or mnn in this process (--device cpu); ncnn also on "
                   "the other devices, in rebirth-time-ncnn. Those time whole passes only (no --layers).")
@click.option("--batch", "-b", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch size of the random input.")
@click.option("--runs", "-n", type=click.IntRange(min=1), default=50, show_default=True,
              help="Timed forward passes per model.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed passes per model first.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads: of the --engine (onnxruntime default: its own; ncnn, mnn default: 1, also in "
                   "rebirth-time-ncnn), or BLAS threads of rebirth-time (devices other than cpu; default: the "
                   "BLAS's own).")
@click.option("--spinning", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="onnxruntime only: whether its worker threads spin after a run (session.intra_op.allow_spinning; "
                   "on is its default, as deployed). auto: on for one or two MODELs, off for more (spinning sessions "
                   "slow each other); off measures what a loaded machine gets with it set to 0.")
@click.option("--cpu-mask", default=None, metavar="HEX",
              help="Pin rebirth-time to these CPUs with taskset, e.g. f0 for a phone's big cores.")
@click.option("--cooldown", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds of rest before each model's turn (lets a phone's CPU cool down).")
@click.option("--block", type=click.IntRange(min=1), default=None,
              help="Runs of a model in a row before the next model's turn, each turn after untimed runs: each "
                   "model timed as if alone, its weights in the caches (1: A B A B; in Caffe a large net between two "
                   "runs of a small one slowed it by 12-15 %). --device cpu only. [default: 10 on onnxruntime with "
                   "its threads spinning, whose spinning slows the next session's first runs; else 1]")
@click.option("--layers", is_flag=True, help="Also time every layer: by type, non-tensor share, top layers.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--plot", type=str, default=None,
              help="Write a bar chart to this .png: time per block (conv1, inception_3a, res2a, ...), tensor and "
                   "non-tensor layers stacked, the models side by side (implies --layers).")
@click.option("--fit-layer-cost", "fit_cost", is_flag=True,
              help="Also fit time = a + b * MACs over the Convolution and InnerProduct layers (their fastest runs) "
                   "and print a / b: what one layer is worth in MACs here, for `rebirth tucker --layer-cost` "
                   "(implies --layers).")
def bench_command(models, weights, device, engine, batch, runs, warmup, threads, spinning, cpu_mask, cooldown, block,
                  layers, as_json, plot, fit_cost):
    """Time MODEL forward passes on random input: best and median run, ratios to the first MODEL
    (runs of several models are interleaved), memory, and with --layers the time of every layer
    and the share of non-tensor layers (the paper's Table 2 and Figure 2). More than two models on
    onnxruntime run with its worker threads not spinning (spinning sessions slow each other;
    --spinning sets it)."""
    if plot:
        plot_mod.check_path(plot)    # a wrong name is refused before any timing
    layers = layers or fit_cost
    if spinning != "auto" and engine.lower() != "onnxruntime":
        raise RebirthError(f"--spinning applies to --engine onnxruntime only, not {engine.lower()}: leave it out")
    dev = _device(device, engine.lower(), threads, cpu_mask, cooldown, batch, layers or plot is not None)
    if block is not None:
        bench.check_block(dev, block)        # before any work
    specs = [folders.model_files(m)[0] if Path(m).is_dir() else m for m in models]  # a folder: its deploy net
    prepared = bench.prepare(specs, list(weights), batch)
    for p, label in zip(prepared, bench.labels([m.rstrip("/") for m in models])):
        p.label = label                                 # reported by the name given

    if spinning == "off":
        dev = dev.crowded()
    elif spinning == "auto" and len(prepared) > 2:
        crowded = dev.crowded()          # ONNX Runtime: sessions that spin slow each other
        if crowded is not dev:
            dev = crowded
            echo(f"rebirth: note: {dev.crowded_note}", err=True)
    block = dev.turn if block is None else block         # the device's, once spinning is settled
    show_warnings(*(p.model.warnings for p in prepared))
    layers = layers or plot is not None
    warning = getattr(dev, "warning", None)
    if warning:
        echo(f"rebirth: warning: {warning}", err=True)
    with progress_bar(len(prepared) * (runs + warmup), "timing", "run") as bar:
        results = bench.run_isolated(prepared, dev, runs, warmup, layers, progress=bar, cooldown=cooldown, block=block)
    # After the run: a device that runs rebirth-time knows what it ran on only once connected.
    settings = {"device": dev.name, "engine": engine.lower(), "device_description": dev.description, "batch": batch,
                "runs": runs, "warmup": warmup, "layers_timed": layers, "cooldown_s": cooldown,
                "block": block}
    if getattr(dev, "info", None):
        settings["device_info"] = dev.info
    if warning:
        settings["device_warning"] = warning
    doc = bench.build_json(results, settings)
    if fit_cost:
        timed = {m.label for m in results}
        doc["layer_cost"] = layer_cost.fit(*layer_cost.points(
            doc["models"], [p.model.net for p in prepared if p.label in timed]))
    if plot:
        inputs = [p.model.source for p in prepared] + list(weights)
        plot_mod.save_plot(doc["models"], plot, inputs=inputs)
    if as_json:
        output_json(doc)
    else:
        echo(reports.bench_text(doc))
        if fit_cost:
            echo("\n" + reports.layer_cost_line(doc["layer_cost"]))
        if plot:
            echo(f"\nplot: {plot}")


def _device(device: str, engine: str, threads, cpu_mask, cooldown, batch: int, layers: bool):
    """bench's own checks of an engine other than Caffe; the Device itself is runtime.target's."""
    on_cpu = device.strip().lower() == "cpu"
    if engine == "caffe" or (not on_cpu and engine != "ncnn"):     # the latter refused by target
        return target.device_for(engine, device, threads, cpu_mask, cooldown)
    if layers:
        raise RebirthError(f"--engine {engine} times whole passes only (no per-layer times): leave out --layers "
                           "and --plot, or use --engine caffe")
    if cpu_mask and on_cpu:
        raise RebirthError("--cpu-mask applies to devices that run a timing program; use taskset with --engine")
    if engine == "ncnn" and batch != 1:
        raise RebirthError(f"ncnn runs one image at a time: --batch 1, not {batch}")
    return target.device_for(engine, device, threads, cpu_mask, cooldown)
