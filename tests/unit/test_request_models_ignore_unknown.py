"""Request bodies ignore unknown fields (the reference clients send extras; the developers' guide: "unknown
fields ignored, wrong types 4xx"): the gateway's, the LLM's /analyze and the model-admin bodies too."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.router.schemas import AnalyzeRequest, GatewayEnrichRequest
from serving.services.gateway import FrameBody
from serving.services.models_admin import ConfigureRequest, ModelsRequest


@pytest.mark.parametrize(("model", "body"), [
    (GatewayEnrichRequest, {"image": "aGk=", "detection_type": "person"}),
    (AnalyzeRequest, {"detections": []}),
    (FrameBody, {"image": "aGk="}),
    (ModelsRequest, {"model": "yolo26"}),
    (ConfigureRequest, {"model": "yolo26", "keep_alive_s": 60}),
])
def test_unknown_fields_are_ignored_and_wrong_types_refused(model, body) -> None:
    parsed = model.model_validate(body | {"client_extra": {"x": 1}, "min_confidence": 0.3})
    assert not hasattr(parsed, "client_extra") and "client_extra" not in parsed.model_dump()
    first = next(iter(body))
    with pytest.raises(ValidationError):
        model.model_validate(body | {first: {"not": "the right type"}})
