"""Issue 11: KServe v2 decoding under a Hypothesis strategy of valid and broken inference requests.

Every request either decodes to tensors whose element count matches the declared shape and whose values fit
the datatype, or is refused with a 400 `ServingError`: never another exception (which would be a 500)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.errors import ServingError
from serving.services.kserve import _parse_infer
from serving.services.kserve_codec import check_parameters, decode_tensor, tensor_option

DTYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
          "FP64", "BYTES"]
RANGES = {"UINT8": (0, 255), "UINT16": (0, 65535), "INT8": (-128, 127), "INT16": (-32768, 32767),
          "UINT32": (0, 2**32 - 1), "INT32": (-(2**31), 2**31 - 1), "UINT64": (0, 2**64 - 1),
          "INT64": (-(2**63), 2**63 - 1)}

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5))
json_value = st.recursive(json_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c,
                                                                                           max_size=3), max_leaves=12)


@st.composite
def valid_tensor(draw):
    dt = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    n = int(np.prod(shape)) if shape else 1
    if dt == "BOOL":
        data = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    elif dt == "BYTES":
        data = draw(st.lists(st.text(max_size=6), min_size=n, max_size=n))
    elif dt in RANGES:
        lo, hi = RANGES[dt]
        data = draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))
    else:
        data = draw(st.lists(st.floats(-1e4, 1e4), min_size=n, max_size=n))
    return {"name": "X", "datatype": dt, "shape": shape, "data": data}


@st.composite
def broken_tensor(draw):
    t = draw(valid_tensor())
    how = draw(st.sampled_from(["shape", "dtype", "value", "data", "params", "huge", "drop"]))
    if how == "shape":
        t["shape"] = draw(st.one_of(json_value, st.lists(st.integers(-3, 2**40), max_size=4)))
    elif how == "dtype":
        t["datatype"] = draw(json_value)
    elif how == "value" and t["data"]:
        i = draw(st.integers(0, len(t["data"]) - 1))
        t["data"][i] = draw(json_scalar)
    elif how == "data":
        t["data"] = draw(json_value)
    elif how == "params":
        t["parameters"] = draw(st.one_of(json_value, st.fixed_dictionaries(
            {"binary_data_size": st.one_of(json_scalar, st.integers(-5, 10**12))})))
    elif how == "huge":
        t["shape"] = [2**40, 2**40, 2**40]
    else:
        t.pop(draw(st.sampled_from(["shape", "datatype", "data", "name"])), None)
    return t


@st.composite
def request_body(draw):
    """(body bytes, header-length header) of a JSON or binary-extension request, valid or broken."""
    tensors = draw(st.lists(st.one_of(valid_tensor(), broken_tensor()), min_size=0, max_size=3))
    for i, t in enumerate(tensors):
        t["name"] = f"X{i}"
    req: dict = {"inputs": tensors}
    if draw(st.booleans()):
        req["parameters"] = draw(st.one_of(json_value, st.dictionaries(st.text(max_size=8), json_scalar, max_size=3)))
    if draw(st.booleans()):
        req["outputs"] = draw(st.one_of(json_value, st.lists(st.fixed_dictionaries(
            {"name": st.sampled_from(["RESULT", "EMBEDDING", "X"]), "parameters": json_value}), max_size=2)))
    if draw(st.booleans()):
        req["id"] = draw(json_scalar)
    header = json.dumps(req).encode()
    if not draw(st.booleans()):
        return header, None
    blob = draw(st.binary(max_size=64))
    hlen = draw(st.one_of(st.just(str(len(header))), st.text(max_size=4), st.integers(-10, 10**6).map(str)))
    return header + blob, hlen


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(request_body())
def test_any_request_decodes_or_is_a_400(case):
    body, hlen = case
    try:
        req, tensors = _parse_infer(body, hlen)
    except ServingError as e:
        assert 400 <= e.status_code < 500, e
        return
    for t in req["inputs"]:
        arr = tensors[t["name"]]
        assert list(arr.shape) == t["shape"]
        if t["datatype"] in RANGES:
            lo, hi = RANGES[t["datatype"]]
            assert arr.size == 0 or (lo <= int(arr.min()) and int(arr.max()) <= hi)
        tensor_option(arr) if arr.dtype != object else None


@pytest.mark.parametrize("value", [256, -1, 300.5, 2**70, "7"])
def test_uint8_values_out_of_range_or_of_the_wrong_type_are_400(value):
    with pytest.raises(ServingError) as e:
        decode_tensor({"name": "IMAGE", "datatype": "UINT8", "shape": [1, 1, 3], "data": [1, 2, value]}, None, 0)
    assert e.value.status_code == 400 and "IMAGE" in e.value.message


def test_binary_sizes_and_element_counts_are_checked():
    raw = memoryview(bytes(range(12)))
    arr, off = decode_tensor({"name": "A", "datatype": "INT32", "shape": [3],
                              "parameters": {"binary_data_size": 12}}, raw, 0)
    assert arr.tolist() == [struct.unpack("<i", bytes(range(i, i + 4)))[0] for i in (0, 4, 8)] and off == 12
    for bad in ({"binary_data_size": 10}, {"binary_data_size": 13}, {"binary_data_size": -4},
                {"binary_data_size": "12"}, {"binary_data_size": 1.5}):
        with pytest.raises(ServingError) as e:
            decode_tensor({"name": "A", "datatype": "INT32", "shape": [3], "parameters": bad}, raw, 0)
        assert e.value.status_code == 400
    with pytest.raises(ServingError):  # 2**64 elements: counted with Python ints, refused, no overflow
        decode_tensor({"name": "A", "datatype": "UINT8", "shape": [2**32, 2**32], "data": []}, None, 0)


@pytest.mark.parametrize("params", [[1], "x", {"a": None}, {"a": [1]}, {"a": {"b": 1}}, {"a": float("nan")},
                                    {"binary_data_output": "yes"}])
def test_parameters_of_the_wrong_json_type_are_400(params):
    with pytest.raises(ServingError) as e:
        check_parameters(params, "request")
    assert e.value.status_code == 400
