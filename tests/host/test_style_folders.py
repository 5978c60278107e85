"""The style-folders loader: input/<dataset>/<style>/* -> IMAGE batch, labels and names; every bad layout refused."""

import os

import comfy.model_management as mm
import comfy.utils
import folder_paths
import numpy as np
import pytest
import torch
from PIL import Image

from devkit.adapters import library
from devkit.host import import_pack

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture()
def input_dir(tmp_path):
    """A fresh ComfyUI input directory, restored afterwards."""
    previous = folder_paths.get_input_directory()
    root = tmp_path / "input"
    root.mkdir()
    folder_paths.set_input_directory(str(root))
    yield root
    folder_paths.set_input_directory(previous)


@pytest.fixture(scope="module")
def sf():
    return import_pack().nodes.style_folders


def _solid(path, size, colour, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, **save)


def _bands(path, size, colours):
    """Vertical bands of equal width, left to right."""
    w, h = size
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    for i, colour in enumerate(colours):
        pixels[:, i * w // len(colours):(i + 1) * w // len(colours)] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _three_styles(root):
    """c_pixel is created first and files out of name order: the loader must sort both."""
    ds = root / "art"
    _solid(ds / "c_pixel" / "only.webp", (40, 90), (10, 200, 30), lossless=True)
    _solid(ds / "a_ink" / "10.png", (64, 48), (250, 0, 0))
    _solid(ds / "a_ink" / "02.png", (30, 100), (0, 0, 250))
    _solid(ds / "a_ink" / "01.png", (128, 64), (0, 250, 0))
    _solid(ds / "b_oil" / "y.jpg", (80, 80), (200, 200, 200), quality=95)
    _solid(ds / "b_oil" / "x.jpeg", (120, 50), (50, 50, 50), quality=95)
    (ds / "b_oil" / "notes.txt").write_text("captions are ignored")
    return ds


def _run(sf, dataset, width=64, height=64, resize="crop", max_per_style=0):
    return sf.OrthoHydraLoadStyleFolders.execute(dataset, width, height, resize, max_per_style).result


def _error(sf, dataset, **kw):
    with pytest.raises(library().OrthoHydraError) as err:
        _run(sf, dataset, **kw)
    message = str(err.value)
    assert "Fix:" in message, message
    assert sf.OrthoHydraLoadStyleFolders.validate_inputs(dataset) in (True, message)
    return message


def test_loads_a_sorted_batch_with_labels_and_names(sf, input_dir):
    _three_styles(input_dir)
    images, styles, labels, names, count = _run(sf, "art", width=48, height=32)
    assert images.shape == (6, 32, 48, 3) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert styles.labels == (0, 0, 0, 1, 1, 2) and styles.names == ("a_ink", "b_oil", "c_pixel")
    assert labels == "0,0,0,1,1,2" and names == "a_ink,b_oil,c_pixel" and count == 6
    means = images.mean(dim=(1, 2))  # solid colours: 01 green, 02 blue, 10 red, x dark, y light, webp
    expected = torch.tensor([(0, 250, 0), (0, 0, 250), (250, 0, 0), (50, 50, 50), (200, 200, 200),
                             (10, 200, 30)]) / 255.0
    assert torch.allclose(means, expected, atol=0.03)
    again = _run(sf, "art", width=48, height=32)
    assert torch.equal(again[0], images) and again[1] == styles
    train = import_pack().nodes.train
    assert train.style_labels_from(labels, count).tolist() == list(styles.labels)  # the trainer's widget reads it


def test_max_per_style_takes_the_first_files_by_name(sf, input_dir):
    _three_styles(input_dir)
    images, styles, labels, names, count = _run(sf, "art", max_per_style=1)
    assert count == 3 and labels == "0,1,2" and images.shape == (3, 64, 64, 3)
    assert styles.labels == (0, 1, 2) and names == "a_ink,b_oil,c_pixel"
    assert torch.allclose(images[0].mean(dim=(0, 1)), torch.tensor([0, 250, 0]) / 255.0, atol=0.02)  # 01.png
    assert torch.allclose(images[1].mean(dim=(0, 1)), torch.tensor([50, 50, 50]) / 255.0, atol=0.03)  # x.jpeg


def test_resize_modes_place_a_known_pattern(sf, input_dir):
    _bands(input_dir / "pat" / "a" / "wide.png", (200, 100), [RED, GREEN, WHITE, BLUE])
    _solid(input_dir / "pat" / "b" / "other.png", (8, 8), RED)

    crop = _run(sf, "pat", resize="crop")[0][0]  # 200x100 -> 128x64, centre 64 columns = green | white
    assert torch.allclose(crop[:, 4:28], torch.tensor(GREEN) / 255.0, atol=0.03)
    assert torch.allclose(crop[:, 36:60], torch.tensor(WHITE) / 255.0, atol=0.03)

    stretch = _run(sf, "pat", resize="stretch")[0][0]  # four 16-column bands
    for band, colour in enumerate([RED, GREEN, WHITE, BLUE]):
        assert torch.allclose(stretch[:, band * 16 + 4:band * 16 + 12], torch.tensor(colour) / 255.0, atol=0.03)

    pad = _run(sf, "pat", resize="pad")[0][0]  # 64x32 centred: 16 black rows above and below
    assert float(pad[:16].abs().max()) == 0.0 and float(pad[48:].abs().max()) == 0.0
    assert torch.allclose(pad[20:44, 2:14], torch.tensor(RED) / 255.0, atol=0.03)
    assert torch.allclose(pad[20:44, 50:62], torch.tensor(BLUE) / 255.0, atol=0.03)

    tall = _run(sf, "pat", width=32, height=64, resize="pad")[0][0]  # 32x16 letterbox in a 32x64 frame
    assert float(tall[:24].abs().max()) == 0.0 and float(tall[40:].abs().max()) == 0.0


def test_exif_orientation_is_applied(sf, input_dir):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20], pixels[:, 20:] = RED, BLUE  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: red on top
    (input_dir / "rot" / "a").mkdir(parents=True)
    Image.fromarray(pixels).save(input_dir / "rot" / "a" / "r.jpg", exif=exif, quality=95)
    _solid(input_dir / "rot" / "b" / "s.png", (8, 8), RED)
    image = _run(sf, "rot", width=32, height=64, resize="stretch")[0][0]
    assert torch.allclose(image[4:28].mean(dim=(0, 1)), torch.tensor(RED) / 255.0, atol=0.05)
    assert torch.allclose(image[36:60].mean(dim=(0, 1)), torch.tensor(BLUE) / 255.0, atol=0.05)


def test_dataset_choices_progress_and_refresh(sf, input_dir):
    _three_styles(input_dir)
    _solid(input_dir / "flat" / "a.png", (8, 8), RED)  # no sub-folders: not a dataset
    _solid(input_dir / "loose.png", (8, 8), RED)
    (input_dir / ".hidden" / "x").mkdir(parents=True)
    assert sf.dataset_choices() == ["art"]
    assert sf.OrthoHydraLoadStyleFolders.GET_SCHEMA().inputs[0].options == ["art"]
    assert sf.OrthoHydraLoadStyleFolders.validate_inputs("art") is True
    assert sf.OrthoHydraLoadStyleFolders.validate_inputs(None) is True  # a linked value is checked at run time

    # the node reports every image; what reaches the front end is the host's choice: 0.3.75 forwards each update,
    # newer hosts send the first, the last and at most one per 0.1 s (and 0.5 %) in between
    reported, shown = [], []
    update = comfy.utils.ProgressBar.update_absolute

    def recording(self, value, total=None, preview=None):
        reported.append((value, total or self.total))
        return update(self, value, total, preview)

    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: shown.append((value, total)))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(comfy.utils.ProgressBar, "update_absolute", recording)
            _run(sf, "art")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert reported == [(i, 6) for i in range(1, 7)]
    assert shown[0] == (1, 6) and shown[-1] == (6, 6) and set(shown) <= set(reported) and shown == sorted(shown)

    before = sf.OrthoHydraLoadStyleFolders.fingerprint_inputs("art", width=64)
    assert sf.OrthoHydraLoadStyleFolders.fingerprint_inputs("art", width=64) == before
    _solid(input_dir / "art" / "c_pixel" / "zz.png", (8, 8), RED)
    assert sf.OrthoHydraLoadStyleFolders.fingerprint_inputs("art", width=64) != before


def test_interrupt_stops_the_loop(sf, input_dir):
    _three_styles(input_dir)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _run(sf, "art")
    finally:
        mm.interrupt_current_processing(False)


def test_names_that_leave_the_input_directory_are_refused(sf, input_dir, tmp_path):
    for bad in ("..", "../art", "/etc", str(input_dir / "art"), "a/b", "a\\b", "", "."):
        message = _error(sf, bad)
        assert "key 'dataset'" in message and "not a folder name inside the input directory" in message, bad
        assert sf.OrthoHydraLoadStyleFolders.validate_inputs(bad) == message
    outside = tmp_path / "outside"
    _solid(outside / "a" / "1.png", (8, 8), RED)
    _solid(outside / "b" / "1.png", (8, 8), BLUE)
    os.symlink(outside, input_dir / "link")
    message = _error(sf, "link")
    assert "outside the input directory" in message and str(outside) in message


def test_missing_dataset(sf, input_dir):
    message = _error(sf, "nope")
    assert str(input_dir / "nope") in message and "does not exist" in message and "key 'dataset'" in message
    assert sf.OrthoHydraLoadStyleFolders.validate_inputs("nope") == message


def test_bad_layouts_name_the_folder(sf, input_dir):
    _solid(input_dir / "single" / "ink" / "1.png", (8, 8), RED)
    message = _error(sf, "single")
    assert "single style" in message and "add a second style folder" in message
    assert str(input_dir / "single") in message

    _solid(input_dir / "flat" / "1.png", (8, 8), RED)
    assert "no style sub-folders" in _error(sf, "flat")

    (input_dir / "blank" / "a").mkdir(parents=True)
    (input_dir / "blank" / "b").mkdir()
    (input_dir / "blank" / "b" / "readme.txt").write_text("not an image")
    message = _error(sf, "blank")
    assert "no images at all" in message and str(input_dir / "blank") in message

    _solid(input_dir / "gap" / "a" / "1.png", (8, 8), RED)
    (input_dir / "gap" / "b").mkdir()
    message = _error(sf, "gap")
    assert "style folder 'b' has no images" in message and str(input_dir / "gap" / "b") in message

    _solid(input_dir / "comma" / "oil, thick" / "1.png", (8, 8), RED)
    _solid(input_dir / "comma" / "ink" / "1.png", (8, 8), RED)
    assert "rename the folder" in _error(sf, "comma")


def test_corrupt_image_names_the_file(sf, input_dir):
    _solid(input_dir / "broken" / "a" / "1.png", (8, 8), RED)
    _solid(input_dir / "broken" / "b" / "1.png", (8, 8), BLUE)
    bad = input_dir / "broken" / "b" / "2.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(library().OrthoHydraError) as err:
        _run(sf, "broken")
    message = str(err.value)
    assert str(bad) in message and "Fix: remove this file or re-export it" in message
    (input_dir / "broken" / "b" / "3.png").write_bytes(b"")  # empty files too
    bad.unlink()
    with pytest.raises(library().OrthoHydraError, match=r"3\.png"):
        _run(sf, "broken")


def test_size_must_be_a_multiple_of_eight(sf, input_dir):
    _three_styles(input_dir)
    message = _error(sf, "art", width=100)
    assert "key 'width'" in message and "multiple of 8" in message and "e.g. 96" in message
    assert "key 'height'" in _error(sf, "art", height=4)
