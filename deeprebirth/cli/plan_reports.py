"""The text of `rebirth plan` and `rebirth accelerate` reports (pure functions of their documents)."""
from __future__ import annotations

from deeprebirth.cli.reports import _num, _table
from deeprebirth.transforms import planner


def _fid(f: dict | None) -> str:
    if not f:
        return "-"
    if f.get("agreement") is None:
        return f.get("note", "-")
    text = f"{100 * f['agreement']:.1f} % agree"
    if f.get("rel_error") is not None:
        text += f", output error {f['rel_error']:.3f}"
    if f.get("top1_drop") is not None:
        text += f", top-1 {round(-100 * f['top1_drop'], 1) + 0.0:+.1f} pt"      # + 0.0: no "-0.0"
    return text


def plan_text(doc: dict) -> str:
    t = doc["target"]
    goal = doc["goal"]
    aim = f"{goal['speedup']:g}x faster (aimed at by accelerate: with labels the check keeps the result within " \
        f"{planner.points(goal['max_drop'])})" if goal.get("aimed") else \
        f"{goal['speedup']:g}x faster" if goal.get("speedup") else \
        f"at most {planner.points(goal['max_drop'])} lost on labelled held-out images" if goal.get("max_drop") \
        is not None and goal.get("labels") else \
        f"at most {goal['max_drop']:g} % of held-out images changing class" if goal.get("max_drop") is not None \
        else "every rewrite that saves time"
    lines = [f"plan for {doc['model']} on {t['engine']} ({t['device']}): {aim}; {doc['basis']}"]
    if goal.get("speedup") is None and goal.get("max_drop") is not None and doc["heldout_images"]:
        lines.append(f"(after recovery; least squares alone may change up to {doc.get('recovery_factor', 1):g}x as "
                     "many, `rebirth accelerate` checks the result)")
    if doc["heldout_images"]:
        lines.append(f"each candidate re-learned on {doc['train_images']} images of {doc['images']}, checked on "
                     f"{doc['heldout_images']} others")
    labels = bool(goal.get("labels"))
    rows = [("candidate", "rules", "saves ms", "±", "flips", *(("lost",) if labels else ()), "out err", "chosen",
             "why")]
    tucker = doc.get("tucker") or {}
    for c in doc["candidates"] + (tucker.get("candidates") or []):
        lost = ("-" if c.get("lost") is None else c["lost"],) if labels else ()
        rows.append((c["name"], ",".join(c["rules"]), _num(c["saved_ms"], ".3f"), _num(c["saved_spread_ms"], ".3f"),
                     "-" if c["flips"] is None else c["flips"], *lost, _num(c["rel_error"], ".3f"),
                     "yes" if c["chosen"] else "no", c["why"]))
    lines += [""] + (_table(rows, {2, 3, 4, 5, 6} if labels else {2, 3, 4, 5}) if len(rows) > 1
                     else ["no lossy candidate"])
    lines.append("")
    ex, full = doc["exact"], doc.get("slim_everything")
    rows = [("net", "ms", "original beside it", "speed-up", "fidelity (least squares only)"),
            ("original", _num(doc["original_ms"], ".2f"), "-", "1.00x", "-"),
            ("exact (lossless rewrites)", _num(ex["ms"], ".2f"), _num(ex.get("original_ms"), ".2f"),
             f"{ex['speedup']:.2f}x", _fid(ex.get("fidelity")))]
    if full:
        rows.append(("slim everything", _num(full["ms"], ".2f"), _num(full.get("original_ms"), ".2f"),
                     f"{full['speedup']:.2f}x", _fid(full.get("fidelity"))))
    if tucker.get("check") and not tucker.get("layers"):
        t = tucker["check"]
        rows.append((f"with {len(t['layers'])} Tucker (not kept)", _num(t["ms"], ".2f"),
                     _num(t.get("original_ms"), ".2f"), f"{t['speedup']:.2f}x", _fid(t.get("fidelity"))))
    rows.append((f"planned ({len(doc['only'])} lossy" + (f" + {len(tucker['layers'])} Tucker" if tucker.get("layers")
                                                         else "") + ")", _num(doc["predicted_ms"], ".2f"),
                 _num(doc["original_ms"], ".2f"), f"{doc['predicted_speedup']:.2f}x",
                 _fid(doc.get("predicted_fidelity"))))
    lines += _table(rows, {1, 2, 3})
    lines.append(f"\npredicted speed-up {doc['predicted_speedup']:.2f}x (medians: the planned net timed beside the "
                 f"original, {doc['timing'].get('check_runs', doc['timing']['runs'])} rounds; each net beside the "
                 f"original in a session of its own), {doc['seconds']:.0f} s")
    lines += [f"note: {n}" for n in doc.get("notes", [])]
    return "\n".join(lines)
