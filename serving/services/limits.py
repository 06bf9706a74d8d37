"""Input limits of a service (body size, pixels, formats, batch size), built once from `Settings`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from serving.imaging import DEFAULT_FORMATS  # one list of accepted formats
from serving.settings import Settings

MB = 1024 * 1024
_LIMIT_FIELDS = ("zoo_max_body_mb", "zoo_max_pixels", "zoo_image_formats", "zoo_max_batch")


@dataclass(frozen=True)
class Limits:
    """Input limits of a service. Settings: ZOO_MAX_BODY_MB, ZOO_MAX_PIXELS, ZOO_IMAGE_FORMATS, ZOO_MAX_BATCH."""

    #: bytes of one request body; larger -> 413 payload_too_large before the body is read
    max_body_bytes: int = 32 * MB
    #: width x height of one decoded image; larger -> 413 image_too_large, checked from the header
    max_pixels: int = 40_000_000
    #: PIL format names accepted after sniffing the bytes (the declared content type is not trusted)
    allowed_formats: frozenset[str] = field(default=DEFAULT_FORMATS)
    #: images in one /…/batch request
    max_batch_images: int = 64

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The defaults above, overridden by the settings that are set (validated by `Settings`)."""
        kw: dict[str, object] = {}
        if settings.zoo_max_body_mb is not None:
            kw["max_body_bytes"] = int(settings.zoo_max_body_mb * MB)
        if settings.zoo_max_pixels is not None:
            kw["max_pixels"] = settings.zoo_max_pixels
        if settings.zoo_max_batch is not None:
            kw["max_batch_images"] = settings.zoo_max_batch
        if settings.zoo_image_formats:
            kw["allowed_formats"] = frozenset(f.strip().upper() for f in settings.zoo_image_formats.split(",")
                                              if f.strip())
        return cls(**kw)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Limits:
        """`from_settings` over an explicit environment mapping only (ConfigError naming a bad variable)."""
        unset = {n: None for n in _LIMIT_FIELDS if not env.get(n.upper())}  # never the process environment
        return cls.from_settings(Settings.from_env(env, **unset))
