"""serving/imaging.py: what a client reads when its image cannot be decoded."""


def test_an_unknown_format_is_named_by_its_first_bytes_not_by_pils_file_object():
    from serving.errors import InvalidImage
    from serving.imaging import ImageLimits, decode_image

    try:
        decode_image(b"definitely not an image", ImageLimits())
    except InvalidImage as e:
        assert "BytesIO" not in str(e) and "definite" in str(e), str(e)
    else:
        raise AssertionError("not an image was decoded")
