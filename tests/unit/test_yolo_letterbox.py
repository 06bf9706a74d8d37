"""serving/adapters/yolo_letterbox.py: the grouping that lets a frame's crops share one forward pass while each
crop sees exactly the tensor it would see alone (ultralytics' LetterBox(auto=True) rectangle)."""

from PIL import Image

from serving.adapters.yolo_letterbox import as_hw, letterbox_groups, letterbox_shape


def test_letterbox_shape_is_ultralytics_rectangle():
    # 60x180 at 96: scaled by 96/180 to 32x96, already a multiple of the stride 32
    assert letterbox_shape(60, 180, 96, 32) == (96, 32)
    # 74x228 -> 31x96, padded to the stride: 32 wide
    assert letterbox_shape(74, 228, 96, 32) == (96, 32)
    assert letterbox_shape(640, 480, 640, 32) == (480, 640)
    assert as_hw([320, 192]) == (320, 192) and as_hw(96) == (96, 96)


def test_same_size_images_run_at_the_models_imgsz():
    ims = [Image.new("RGB", (60, 180)) for _ in range(3)]
    assert letterbox_groups(ims, 96, 32) == [([0, 1, 2], 96)]


def test_different_sizes_with_one_rectangle_run_at_that_rectangle_not_the_square():
    """Sizes differ but share the rectangle: one group, at the rectangle (at `imgsz` ultralytics would pad the
    mixed batch to the full square and change every result)."""
    ims = [Image.new("RGB", (60, 180)), Image.new("RGB", (67, 204)), Image.new("RGB", (74, 228))]
    assert letterbox_groups(ims, 96, 32) == [([0, 1, 2], [96, 32])]


def test_different_rectangles_are_separate_groups_in_input_order():
    ims = [Image.new("RGB", (60, 180)), Image.new("RGB", (200, 100)), Image.new("RGB", (70, 210))]
    groups = letterbox_groups(ims, 96, 32)
    assert groups == [([0, 2], [96, 32]), ([1], [64, 96])]
