"""The metrics subscriber handles every typed event of the manager (STYLE.md #15)."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.services.metrics import Metrics
from serving.vram import events as ev


def sample(event_type: type) -> ev.ManagerEvent:
    """An instance with placeholder values for every field."""
    values = {"str": "m", "int": 1, "float": 0.5}
    return event_type(**{f.name: values[str(f.type)] for f in dataclasses.fields(event_type)})


def test_every_event_type_has_a_handler():
    missing = [t.__name__ for t in ev.EVENT_TYPES if t not in Metrics.HANDLERS]
    assert not missing, f"events without a metrics handler: {missing}"


@pytest.mark.parametrize("event_type", ev.EVENT_TYPES, ids=lambda t: t.__name__)
def test_each_event_moves_a_metric(event_type):
    metrics = Metrics("svc")
    before = metrics.render()
    metrics.on_event(sample(event_type))
    assert metrics.render() != before


def test_overload_counter_is_exported():
    metrics = Metrics("svc")
    metrics.on_event(ev.Overloaded(device="cuda:0", queued=64, max_queue=64))
    metrics.on_event(ev.Overloaded(device="cuda:0", queued=64, max_queue=64))
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    samples = [s for s in families["zoo_inference_overloaded"].samples if s.name == "zoo_inference_overloaded_total"]
    assert [(s.labels, s.value) for s in samples] == [({"device": "cuda:0"}, 2.0)]
