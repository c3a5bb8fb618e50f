"""Where MAC budgets land: ``prune{macs=T}`` and ``lowrank{macs=T}`` on the bundled models, achieved fraction of
MACs kept vs the target, with the pass's default channel steps and with the CPU targets' channel block (16).

    python bench/budgets/run.py [--targets 0.75,0.5] [--json out.json]

The contract (passes/prune/prune_pass.py): at or under the target, within 3 points where the channel steps allow;
further off, the pass warns with the achieved value. Deterministic (seeded random calibration), seconds to run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS = ["resnet_s", "mobilenetv2_s", "yolo_s", "pose_s", "face_s"]


def main(argv: list[str] | None = None) -> int:
    from compress_graph import load, run_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="0.75,0.5")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = []
    for name in MODELS:
        for target in (float(t) for t in args.targets.split(",")):
            for pipeline in (f"prune{{macs={target}}}", f"prune{{macs={target},round_to=16}}",
                             f"lowrank{{macs={target}}}"):
                _, report = run_pipeline(load(REPO / "models" / f"{name}.onnx"), pipeline, verify=False)
                st = report["passes"][0]["stats"]
                kept = st.get("macs_kept") if "macs_kept" in st else (
                    st["macs_after"] / st["macs_before"] if st.get("macs_before") else 1.0)
                warned = [w for w in report["warnings"] if "landed" in w or "not reached" in w]
                rows.append({"model": name, "pipeline": pipeline, "target": target, "kept": round(kept, 4),
                             "groups": st.get("groups"), "rounds": st.get("allocation_rounds"), "warned": bool(warned)})
                print(json.dumps(rows[-1]), flush=True)
    print("| model | pipeline | kept (target) | warned |\n|---|---|---|---|")
    for r in rows:
        warned = 'yes' if r['warned'] else ''
        print(f"| {r['model']} | `{r['pipeline']}` | {r['kept']:.3f} ({r['target']}) | {warned} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
