"""Quality of the trained fixtures on held-out generated scenes: detector hit rate (right class, IoU >= 0.8),
mean IoU and false detections per image (for a segmenter also the mean mask IoU), on 3:4-4:3 pictures and
on wide and tall ones (long:short 1.6-3.4); classifier top-1 accuracy; and each fixture's build record.

    PYTHONPATH=. python benchmarks/fixture_quality.py [--zoo zoo.yaml] [--scenes 50]

Run `zoo fixtures` first (it builds and caches them). Not measured on a GPU (CPU inference).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="zoo.yaml")
    ap.add_argument("--scenes", type=int, default=50, help="held-out scenes per detector")
    args = ap.parse_args()

    from serving.config import load_zoo
    from serving.fixtures import read_marker, recipe_of
    from serving.fixtures.quality import evaluate_classifier, evaluate_detector
    from serving.fixtures.train_yolo import untrained_reason

    zoo = load_zoo(args.zoo, env={})
    root = Path(zoo.models_root)
    print(f"{'model':22} {'kind':10} {'result':58} {'build':>18}")
    for name, spec in zoo.models.items():
        marker = read_marker(root, name)
        metrics = marker.get("metrics") or {}
        build = f"{marker.get('build_seconds', 0):.1f}s"
        if "train_seconds" in metrics:
            build += f" +train {metrics['train_seconds']:.0f}s"
        t0 = time.perf_counter()
        if spec.family == "yolo":
            if recipe_of(name, spec) is None:
                print(f"{name:22} {'random':10} {untrained_reason(name)[:58]}")
                continue
            for kind, wide in (("detector", False), ("wide/tall", True)):
                q = evaluate_detector(name, spec, root, count=args.scenes, wide=wide)
                res = (f"hit {q['hit_rate']:.1%} of {q['objects']}, mean IoU {q['mean_iou']:.3f}, "
                       f"false/img {q['false_per_image']:.2f}")
                if "mean_mask_iou" in q:
                    res += f", mask IoU {q['mean_mask_iou']:.3f}"
                print(f"{name:22} {kind:10} {res:58} {build if not wide else '':>18}  "
                      f"({time.perf_counter() - t0:.1f}s)")
        elif spec.family == "hf_image_classifier":
            q = evaluate_classifier(name, spec, root)
            res = f"accuracy {q['accuracy']:.1%} of {q['eval_images']}"
            print(f"{name:22} {'classifier':10} {res:58} {build:>18}")


if __name__ == "__main__":
    main()
