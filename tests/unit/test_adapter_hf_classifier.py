"""`hf_image_classifier`: every classifier of the zoo loads from its fixture, predicts on CPU in its seed
schema, and survives offload -> restore unchanged."""

from __future__ import annotations

import pytest
from _hf_support import (
    AgeResult,
    GenderResult,
    PetResult,
    VehicleResult,
    ViolenceResult,
    WeatherResult,
    check_lifecycle,
    image,
    load_adapter,
)

from serving.adapters.base import ImageItem
from serving.errors import ConfigError, InvalidBBox, InvalidImage
from serving.imaging import BBox

SCHEMAS = {
    "demographics_age": AgeResult,
    "demographics_gender": GenderResult,
    "vehicle_classifier": VehicleResult,
    "pet_classifier": PetResult,
    "weather_classifier": WeatherResult,
    "violence_classifier": ViolenceResult,
}


@pytest.fixture(scope="module")
def hf_zoo(built_models):
    return built_models(*SCHEMAS)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_classifier_predicts_seed_schema(hf_zoo, name):
    adapter = load_adapter(hf_zoo, name)
    img = image()
    items = [img, ImageItem(img, BBox(x1=5, y1=10, x2=60, y2=90))]
    out = adapter.predict(items, top_k=3)
    assert len(out) == 2
    for result in out:
        top = result.pop("top_k")
        assert len(top) == min(3, len(adapter.labels)) and top == sorted(top, key=lambda t: -t["score"])
        SCHEMAS[name].model_validate(result)
    assert adapter.metadata()["num_classes"] == len(adapter.labels) > 1
    check_lifecycle(adapter, lambda: adapter.predict(items))
    adapter.unload()
    assert adapter.param_bytes() == 0


def test_fixture_label_sets_are_the_real_ones(hf_zoo):
    from serving.adapters.postprocess.vehicle import VEHICLE_SEGMENT_CLASSES

    assert load_adapter(hf_zoo, "vehicle_classifier").labels == VEHICLE_SEGMENT_CLASSES
    pet = load_adapter(hf_zoo, "pet_classifier")
    assert len(pet.labels) == 1000 and pet.labels[281] == "tabby" and pet.labels[207] == "golden retriever"
    assert type(pet.model).__name__ == "ResNetForImageClassification"


def test_bad_inputs_are_4xx(hf_zoo):
    adapter = load_adapter(hf_zoo, "demographics_gender")
    with pytest.raises(InvalidImage):
        adapter.predict(["not an image"])
    with pytest.raises(InvalidBBox):
        adapter.predict([ImageItem(image(), BBox(x1=50, y1=5, x2=10, y2=20))])
    assert adapter.predict([]) == []


def test_unknown_label_set_is_a_config_error(hf_zoo):
    from serving.adapters.registry import AdapterRegistry
    from serving.vram.devices import CpuDevice

    spec = hf_zoo.models["demographics_age"].model_copy(update={"options": {"labels": "shoe_size"}})
    with pytest.raises(ConfigError):
        AdapterRegistry().create("x", spec, hf_zoo.models_root, CpuDevice())
