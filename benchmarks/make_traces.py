"""Generate the policy-benchmark traces (deterministic: fixed seeds). Run: python benchmarks/make_traces.py

- zipf.jsonl:   requests for the heavy enrichment models with Zipf(1.1) popularity, Poisson arrivals.
- camera.jsonl: a security camera's day built from seed 003's triggers: people walking by (person),
                cars arriving and parking (car/truck), delivery vans, pets at night (dog/cat), occasional
                action-recognition and depth requests; busier in the morning and evening.
- bursty.jsonl: bursts that each hammer one group of models, then switch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "traces"
HEAVY = ["fashion_clip", "vehicle_classifier", "demographics_age", "demographics_gender", "action_recognizer",
         "weather_classifier", "violence_classifier", "segformer_clothes", "vehicle_damage", "vitpose",
         "license_plate", "face_detector"]


def write(name: str, events: list[dict]) -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    events.sort(key=lambda e: e["t"])
    with open(HERE / name, "w") as f:
        for e in events:
            f.write(json.dumps(e, separators=(",", ":")) + "\n")


def zipf(n: int = 3000, seed: int = 1) -> None:
    rng = random.Random(seed)
    order = HEAVY[:]
    rng.shuffle(order)
    weights = [1.0 / (k + 1) ** 1.1 for k in range(len(order))]
    t = 0.0
    ev = []
    for _ in range(n):
        t += rng.expovariate(1 / 4.0)
        ev.append({"t": round(t, 3), "model": rng.choices(order, weights)[0], "ms": rng.randint(10, 80)})
    write("zipf.jsonl", ev)


def _rate_per_min(h: float, kind: str) -> float:
    day = 7 <= h < 21
    rush = 7 <= h < 9 or 17 <= h < 19
    if kind == "person":
        return 1.2 if rush else (0.5 if day else 0.05)
    if kind == "vehicle":
        return 0.8 if rush else (0.25 if day else 0.03)
    if kind == "pet":
        return 0.02 if day else 0.25
    return 0.0


def _sighting(rng: random.Random, t: float, kind: str) -> list[dict]:
    """The trace lines of one sighting of `kind` at time t (same random draws, in the same order)."""
    if kind == "person":
        # someone walks by: a few frames with a person, sometimes with a car
        opts = {}
        if rng.random() < 0.15:
            opts["action_recognition"] = True
        if rng.random() < 0.05:
            opts["include_violence"] = True
        dets = ["person"] + (["car"] if rng.random() < 0.2 else [])
        return [{"t": round(t + 2 * k, 3), "detections": dets, "ms": 40, "options": opts}
                for k in range(rng.randint(1, 4))]
    if kind == "vehicle":
        label = rng.choice(["car", "car", "car", "truck", "bus", "motorcycle"])
        return [{"t": round(t + 3 * k, 3), "detections": [label], "ms": 30} for k in range(rng.randint(1, 3))]
    return [{"t": round(t, 3), "detections": [rng.choice(["dog", "cat"])], "ms": 20}]


def camera(hours: float = 24.0, seed: int = 2) -> None:
    rng = random.Random(seed)
    ev = []
    t = 0.0
    end = hours * 3600
    while t < end:
        t += rng.expovariate(1 / 10.0)
        h = (t / 3600) % 24
        for kind in ("person", "vehicle", "pet"):
            if rng.random() < _rate_per_min(h, kind) / 6.0:
                ev.extend(_sighting(rng, t, kind))
        if rng.random() < 0.004:
            ev.append({"t": round(t, 3), "model": "weather_classifier", "ms": 15})
        if rng.random() < 0.002:
            ev.append({"t": round(t, 3), "model": "segformer_clothes", "ms": 60})
    write("camera.jsonl", ev)


def bursty(n_bursts: int = 60, seed: int = 3) -> None:
    rng = random.Random(seed)
    groups = [HEAVY[0:4], HEAVY[4:7], HEAVY[7:10], HEAVY[10:12] + HEAVY[0:1]]
    ev = []
    t = 0.0
    for _ in range(n_bursts):
        g = rng.choice(groups)
        for _ in range(rng.randint(20, 60)):
            t += rng.expovariate(1 / 0.5)
            ev.append({"t": round(t, 3), "model": rng.choice(g), "ms": 25})
        t += rng.uniform(30, 300)
    write("bursty.jsonl", ev)


if __name__ == "__main__":
    zipf()
    camera()
    bursty()
    for p in sorted(HERE.glob("*.jsonl")):
        print(p.name, sum(1 for _ in open(p)))
