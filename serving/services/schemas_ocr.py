"""Request and response models of the plate reader: POST /plate-ocr of the enrichment services and the
`license_plate` object /enrich adds for vehicles (serving/services/plate_ocr.py)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from serving.imaging import BBox

ImageData = str | bytes
BoxField = Annotated[BBox, BeforeValidator(BBox.coerce)]


class PlateOcrRequest(BaseModel):
    """POST /plate-ocr: an image (a plate crop, or a frame with the plate's `bbox`)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    image: ImageData = Field(description="Base64 image (or raw bytes / multipart): a plate crop or a whole frame.")
    bbox: BoxField | None = Field(None, description="The plate's region in `image` (pixels); boxes come back in "
                                                    "the image's coordinates.")
    charset: str | None = Field(None, min_length=1, max_length=512,
                                description="Characters the reader may output (default A-Z and 0-9).")
    min_confidence: float | None = Field(None, ge=0.0, le=1.0,
                                         description="Text lines read with less confidence are dropped (0.5).")


class _Resp(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextBox(_Resp):
    """One text line the reader found."""

    text: str
    confidence: float = Field(ge=0.0, le=1.0)
    bbox: dict[str, float] = Field(description="{x1, y1, x2, y2} in the request image's pixels.")
    polygon: list[list[float]] = Field(description="The line's four corners [[x, y], ...] (it may be rotated).")


class PlateOcrResponse(_Resp):
    """POST /plate-ocr."""

    text: str = Field(description="What was read, upper case, letters and digits only (lines in reading order).")
    raw_text: str = Field(description="The lines as read, joined by spaces.")
    confidence: float = Field(ge=0.0, le=1.0, description="Character-weighted mean confidence; 0 when nothing read.")
    boxes: list[TextBox]
    image_width: int
    image_height: int
    model: str
    inference_time_ms: float


class LicensePlate(_Resp):
    """`license_plate` of /enrich for a vehicle: the best plate the plate detector found, read."""

    text: str = Field(description='Upper case, letters and digits only; "" when the plate could not be read.')
    confidence: float = Field(ge=0.0, le=1.0, description="The reader's confidence.")
    bbox: dict[str, float] = Field(description="The plate's box {x1, y1, x2, y2} in the frame's pixels.")
    detection_confidence: float = Field(description="The plate detector's confidence.")
    raw_text: str = ""
    model: str
